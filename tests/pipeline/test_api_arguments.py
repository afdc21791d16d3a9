"""The Python API's boundary: an argument of the wrong type or value, to any public function, is one
edgepipe error line (an ArgumentTypeError, also a TypeError, or an ArgumentValueError, also a ValueError),
raised where it enters, never an AttributeError or TypeError from deep inside."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgepipe
from edgepipe.core.errors import ArgumentTypeError, ArgumentValueError, EdgepipeError
from edgepipe.testing import write_idx_dataset, write_recipe


def _path(v) -> bool:
    return isinstance(v, (str, os.PathLike))


def _text(v) -> bool:
    return v is None or isinstance(v, str)


def _flag(v) -> bool:
    return isinstance(v, bool)


def _count(least: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least


def _overrides(v) -> bool:
    return v is None or isinstance(v, dict) and all(isinstance(k, str) for k in v)


# function -> parameter -> what it takes (a value outside it must be refused)
SPECS = {
    "edgepipe.run": {
        "recipe": lambda v: _path(v) or isinstance(v, dict),
        "set": _overrides,
        "profile": _text,
        "until": _text,
        "only": _text,
        "force": _flag,
        "jobs": _count(1),
        "root": _path,
        "target": _text,
        "host": _text,
        "isolate": _flag,
    },
    "edgepipe.load_recipe": {
        "path": lambda v: _path(v) or isinstance(v, dict),
        "profile": _text,
        "sets": lambda v: isinstance(v, (list, tuple)) and all(isinstance(i, str) for i in v),
        "target": _text,
        "host": _text,
        "default_target": _text,
        "hosts": lambda v: v is None or isinstance(v, dict) and all(isinstance(x, str) for kv in v.items() for x in kv),
        "values": _overrides,
    },
    "edgepipe.find_recipe": {"name_or_path": _path, "recipes_dir": _path},
    "edgepipe.Runner": {
        "recipe": lambda v: False,  # only a loaded recipe, never generated here
        "root": _path,
        "cache_size": _count(0),
        "isolate": _flag,
        "track": _text,
        "on_progress": lambda v: v is None or callable(v),
    },
    "Runner.run": {"until": _text, "only": _text, "force": _flag, "dry_run": _flag, "jobs": _count(1)},
    "Runner.plan": {"until": _text, "only": _text},
}
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.binary(max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=2),
    st.tuples(st.integers()),
    st.dictionaries(
        st.one_of(st.integers(), st.text(max_size=3)), st.one_of(st.integers(), st.text(max_size=3)), max_size=2
    ),
    st.sets(st.integers(), max_size=2),
    st.sampled_from([Path("x"), object(), 1j, print, ..., type]),
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with a one-stage recipe (data): a call whose arguments are all good would only read it."""
    root = tmp_path_factory.mktemp("api")
    idx = write_idx_dataset(root / "idx", n_train=40, n_test=10)
    recipe = {"name": "t", "stages": {"data": {"kind": "data", "params": {"source": f"idx:{idx}"}}}}
    return root, write_recipe(root / "t.yaml", recipe)


def _call(project, function: str, name: str, value):
    root, recipe = project
    if function == "edgepipe.run":
        good = {"recipe": str(recipe), "root": root, "isolate": False, "until": "data"}
        return edgepipe.run(**{**good, name: value})
    if function == "edgepipe.load_recipe":
        return edgepipe.load_recipe(**{"path": recipe, name: value})
    if function == "edgepipe.find_recipe":
        return edgepipe.find_recipe(**{"name_or_path": str(recipe), name: value})
    loaded = edgepipe.load_recipe(recipe)
    if function == "edgepipe.Runner":
        return edgepipe.Runner(**{"recipe": loaded, "root": root, name: value})
    runner = edgepipe.Runner(loaded, root)
    if function == "Runner.run":
        return runner.run(**{"dry_run": True, name: value})
    return runner.plan(**{name: value})


def _refused(call, function: str, name: str) -> EdgepipeError:
    with pytest.raises(EdgepipeError) as info:
        call()
    e = info.value
    line = str(e)
    assert isinstance(e, (TypeError, ValueError)) and e.exit_code == 2, repr(e)
    assert "\n" not in line and "; fix: " in line and name in line, line
    assert line.startswith(f"{function}: ") or line.startswith(f"--{name} "), line
    return e


PAIRS = [(f, n) for f, params in SPECS.items() for n in params]


@pytest.mark.parametrize("function, name", PAIRS, ids=[f"{f}({n})" for f, n in PAIRS])
def test_any_wrong_argument_to_a_public_function_is_one_edgepipe_error(project, function, name):
    accepts = SPECS[function][name]

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=ANY_VALUE.filter(lambda v: not accepts(v)))
    def check(value):
        _refused(lambda: _call(project, function, name, value), function, name)

    check()


NAMED = [
    ("set", ["model.epochs=3"], ArgumentTypeError, "set=['model.epochs=3'] is a list", "pass set={'model.epochs': 3}"),
    ("set", "model.epochs=3", ArgumentTypeError, "set='model.epochs=3' is a str", "pass set={'model.epochs': 3}"),
    ("jobs", "2", ArgumentTypeError, "jobs='2' is a str, not an integer", "jobs=1"),
    ("jobs", 0, ArgumentValueError, "jobs=0: must be at least 1", "pass jobs=1 or more"),
    ("root", 3, ArgumentTypeError, "root=3 is an int, not a path", "root='.'"),
    ("profile", ["smoke"], ArgumentTypeError, "profile=['smoke'] is a list, not a string", "profile='smoke'"),
]


@pytest.mark.parametrize("name, value, error, what, fix", NAMED, ids=[f"{n}={v!r}" for n, v, *_ in NAMED])
def test_the_reported_bad_arguments_are_one_line_before_anything_runs(project, name, value, error, what, fix):
    root, _ = project
    e = _refused(lambda: _call(project, "edgepipe.run", name, value), "edgepipe.run", name)
    assert type(e) is error and what in e.message and fix in e.fix, str(e)
    assert isinstance(e, TypeError if error is ArgumentTypeError else ValueError)
    again = pickle.loads(pickle.dumps(e))  # crosses a worker process unchanged
    assert type(again) is error and str(again) == str(e)
    assert not (root / "runs").exists()
