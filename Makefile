# edgepipe: `make recipe=NAME` runs recipes/NAME.yaml (setting up .venv first if needed).
# Variables: recipe (required for a run), profile (e.g. smoke), until (stop after this stage),
#            jobs (stages run at once when their inputs are ready; default 2),
#            args (extra `edgepipe run` options, e.g. args="--force --set teacher.epochs=2").

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
recipe ?=
profile ?=
until ?=
jobs ?= 2
args ?=
# pytest-xdist workers for `make test` (0: in this process). Two on two cores: most of a test is
# starting a Python that imports TensorFlow, or a tiny model on one core.
test_workers ?= 2

# Project settings (the offline dataset mirror, targets, the run cache's size) live in edgepipe.toml,
# which every edgepipe command reads; make passes only what it is given.

ifneq ($(recipe),)
.DEFAULT_GOAL := run
else
.DEFAULT_GOAL := help
endif

.PHONY: help setup system system-test run status test test-recipes test-all lint format bench clean

help:
	@echo "make recipe=NAME [profile=P] [until=STAGE] [jobs=N]   run recipes/NAME.yaml (e.g. make recipe=mnist_student)"
	@echo "make status recipe=NAME                       which stages are stale, and why"
	@echo "make test                                     the fast test suite"
	@echo "make test-recipes                             the recipes' smoke profiles end to end (CI runs them too)"
	@echo "make test-all                                 every test, slow ones included"
	@echo "make lint | make format                      ruff check and format --check | apply both"
	@echo "make bench                                    benchmarks under benchmarks/"
	@echo "make setup | make clean                       (setup: the Debian packages the recipes need, and .venv)"

# Quiet on purpose: one line saying what happens, then only pip's errors (pip -v shows the rest).
PIP_QUIET := --quiet --disable-pip-version-check --no-input
$(BIN)/.installed: pyproject.toml
	@echo "setting up $(VENV): edgepipe and its dependencies from PyPI (about 2 minutes and 2 GB the first time)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install $(PIP_QUIET) --upgrade pip
	@# setuptools' editable install prints a boxed note ("Editable installation") no user acts on
	@PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install $(PIP_QUIET) -e '.[test]'
	@touch $@
	@echo "$(VENV) is ready"

# The Debian packages (edgepipe/core/system.py lists them): installed as root or with passwordless sudo,
# else the apt-get command is printed once and setup goes on; a stage that needs them then refuses to start.
system:
	@$(PYTHON) edgepipe/core/system.py install run

system-test:
	@$(PYTHON) edgepipe/core/system.py install test

setup: system $(BIN)/.installed

run: setup
	@test -n "$(recipe)" || { echo "usage: make recipe=NAME (one of: $$(ls recipes | sed 's/.yaml//' | tr '\n' ' '))"; exit 2; }
	$(BIN)/edgepipe run $(recipe) --jobs $(jobs) $(if $(profile),--profile $(profile)) $(if $(until),--until $(until)) $(args)

status: setup
	$(BIN)/edgepipe status $(recipe) $(if $(profile),--profile $(profile))

test: system-test setup lint
	$(BIN)/python -m pytest -q -n $(test_workers) --durations=10

# ruff's lint rules and formatting (pyproject.toml [tool.ruff]); `make format` applies both
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# the recipes' smoke profiles end to end, which make test leaves out to stay fast; CI runs both
test-recipes: system-test setup
	$(BIN)/python -m pytest -q -n $(test_workers) --recipes -m recipe --durations=10

test-all: system-test setup
	$(BIN)/python -m pytest -q -n $(test_workers) --runslow

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs models
