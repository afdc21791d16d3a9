"""The documentation: the site builds strictly, the README stays a quickstart, dated figures stay on the
results page, and the results page is written from report.json with its stamp."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

README_LIMIT = 8192  # bytes: a quickstart, not a manual (issue #29)
# 2026-12-02, not 2026-13-45 or a version such as 0.dev20261023182759 (no dashes).
ISO_DATE = re.compile(r"\b20\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\b")
HOSTS = re.compile(r"\b(AMD|EPYC|Xeon)\b")
HEX_WORD = re.compile(r"\b[0-9a-f]{7,40}\b")


def _build(config, dest):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's banner about MkDocs 2.0, not ours
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(dest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="mkdocs-material not installed: pip install -e '.[docs]'")
    dest = tmp_path_factory.mktemp("site")
    p = _build(REPO / "mkdocs.yml", dest)
    assert p.returncode == 0, p.stdout + p.stderr
    return dest


def _text(html_file):
    """A built page as text: tags dropped, entities for the characters the pages use undone."""
    text = re.sub(r"<[^>]+>", "", html_file.read_text())
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&#39;", "'")
        .replace("&quot;", '"')
    )


def test_site_builds_strictly_with_every_command_and_stage_kind(site):
    from edgepipe.cli import main
    from edgepipe.core.params import describe
    from edgepipe.stages.registry import kinds

    cli = _text(site / "reference" / "cli" / "index.html")
    for name, command in main.commands.items():
        assert f"edgepipe {name} [OPTIONS]" in cli, f"command {name} missing from the CLI reference"
        for option in command.params:
            for opt in getattr(option, "opts", []):
                if opt.startswith("--"):
                    assert opt in cli, f"{name} {opt} missing from the CLI reference"
    stages = _text(site / "reference" / "stages" / "index.html")
    for name, kind in kinds().items():
        assert re.search(rf"\b{re.escape(name)}\b", stages), f"stage kind {name} missing from the stages reference"
        for param, _default, meaning in describe(kind.params):  # the names and meanings `edgepipe kinds` prints
            assert param in stages, f"{name}.{param} missing from the stages reference"
            assert " ".join(meaning.replace("`", "").split()) in " ".join(stages.split()), f"{name}.{param}'s meaning"
    assert "gates[].max_drop" in stages  # the fields of a list's items too
    assert "<!-- generated:" not in (site / "reference" / "cli" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    """--strict is what makes a broken link fail; this plants one in a copy of the site."""
    pytest.importorskip("mkdocs", reason="mkdocs not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="mkdocs-material not installed: pip install -e '.[docs]'")
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(REPO / "mkdocs.yml", copy)
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copytree(REPO / "tools", copy / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "edgepipe").symlink_to(REPO / "edgepipe")
    with open(copy / "docs" / "data.md", "a") as f:
        f.write("\nSee [the runner](runner.md#no-such-section) and [a recipe](../recipes/smoke.yaml).\n")
    p = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert p.returncode != 0
    warnings = [line for line in p.stderr.splitlines() if line.startswith("WARNING")]
    assert any("no-such-section" in w for w in warnings), p.stderr  # an anchor that is not there
    assert any("smoke.yaml" in w for w in warnings), p.stderr  # a file outside docs/


def test_readme_is_a_quickstart():
    readme = REPO / "README.md"
    size = readme.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move the detail to docs/"
    text = readme.read_text()
    assert "make recipe=mnist_student" in text and "make test" in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / page).is_file(), f"README links to {page}, which does not exist"


def test_pointers_to_the_docs_name_pages_and_sections_that_exist():
    """`docs/PAGE.md, "Section"` in the code, the recipes and the benchmarks' log names a page and a heading
    that exist, so an error message's `fix:` never sends a user to a section that moved."""
    pointer = re.compile(r'docs/([\w./-]+\.md)(?:, "([^"]+)")?')
    files = [
        *(REPO / "edgepipe").rglob("*.py"),
        *(REPO / "recipes").glob("*.yaml"),
        REPO / "benchmarks" / "README.md",
        REPO / "edgepipe.toml",
        REPO / "Makefile",
    ]
    seen, bad = 0, []
    for f in files:
        for page, section in pointer.findall(f.read_text()):
            seen += 1
            doc = REPO / "docs" / page
            headings = re.findall(r"^#+ (.+)$", doc.read_text(), re.M) if doc.is_file() else []
            if not doc.is_file() or (section and not any(h.replace("`", "").startswith(section) for h in headings)):
                bad.append(f"{f.relative_to(REPO)}: docs/{page}" + (f', "{section}"' if section else ""))
    assert seen and not bad, "pointers to missing docs pages or sections:\n" + "\n".join(bad)


def _commit(word):
    """True if `word` names a commit of this repository (an abbreviated hash)."""
    p = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{word}^{{commit}}"], capture_output=True)
    return p.returncode == 0


def test_dated_figures_only_on_the_results_page():
    """No ISO date, host name or commit stamp in the README or a docs page other than docs/results.md. The
    whole text is checked, code blocks included: that is where dated dumps of runs used to live. A hex word
    counts as a stamp when it mixes digits and letters (7239767 does not, 329216c does) or names a commit
    of this repository."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        if page == REPO / "docs" / "results.md":
            continue
        for n, line in enumerate(page.read_text().splitlines(), 1):
            where = f"{page.relative_to(REPO)}:{n}"
            found += [f"{where}: date {m.group()}" for m in ISO_DATE.finditer(line)]
            found += [f"{where}: host {m.group()}" for m in HOSTS.finditer(line)]
            for m in HEX_WORD.finditer(line):
                w = m.group()
                if (re.search(r"\d", w) and re.search(r"[a-f]", w)) or _commit(w):
                    found.append(f"{where}: commit-like {w}")
    assert not found, "dated figures belong on docs/results.md (tools/results_page.py):\n" + "\n".join(found)


def _report(cpu):
    """A report.json as the report stage writes it: one int8 row benched on the host and an emulated M4."""
    tag = lambda v, p: {"value": v, "provenance": p}  # noqa: E731
    row = {
        "name": "student_qat/int8",
        "quantization": "int8",
        "qat": True,
        "accuracy": 0.9941,
        "val_accuracy": 0.992,
        "val_samples": 6000,
        "delta_points": -0.04,
        "size_bytes": 29286,
        "compressed_bytes": 23552,
        "params": 23236,
        "macs": 440000,
        "latency_p50_us": 7.2,
        "latency_p90_us": 7.9,
        "latency_p99_us": 8.4,
        "fps": 138000.0,
        "latency_p50_us_all_threads": 15.1,
        "fps_all_threads": 66000.0,
        "arena_bytes": 7475,
        "tflm_ok": True,
        "test_samples": 10000,
        "parity": {"samples": 200, "top1_agreement": 1.0},
        "targets": {
            "host": {
                "deployable": True,
                "accuracy": tag(0.9941, "host-litert"),
                "latency_p50_us": tag(7.2, "host-litert"),
                "memory": {"value": 32768, "what": "RSS growth", "provenance": "host-litert"},
            },
            "cortex-m4": {
                "deployable": True,
                "accuracy": tag(0.9936, "emulated"),
                "instructions": tag(1150000, "emulated"),
                "latency_p50_us": tag(15000, "emulated"),
                "latency_ms": tag(15.0, "emulated"),
                "fps": tag(66.67, "emulated"),
                "flash": tag(75469, "emulated"),
                "memory": {"value": 8908, "what": "RAM", "provenance": "emulated"},
                "fits": True,
            },
        },
    }
    return {
        "title": "mnist_student",
        "reference": None,
        "rows": [row],
        "targets": ["host", "cortex-m4"],
        "measured_on": [
            {"target": "cortex-m4", "label": "Cortex-M4 (emulated)", "kind": "mcu"},
            {"target": "host", "label": f"this host (x86_64, {cpu})", "kind": "cpu"},
        ],
        "provenance": {"target": "host", "cpu": cpu, "cores": 2, "ai_edge_litert": "2.3.0"},
        "devices": {"cortex-m4": "emulated: QEMU mps2-an386 (cortex-m4), 8.2.2"},
        "gates": [
            {
                "model": "student_qat/int8",
                "against": "student_scratch/float32",
                "split": "val",
                "drop_points": 0.02,
                "max_drop": 0.3,
                "passed": True,
            }
        ],
        "searches": [],
    }


def _write_report(root, cpu):
    path = root / "runs" / "mnist_student" / "report" / "report.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_report(cpu)))
    return path


def test_results_page_is_stamped_once_and_has_the_rows(tmp_path):
    from edgepipe.pipeline.history import machine

    host = machine()
    _write_report(tmp_path, host["cpu"])
    out = tmp_path / "results.md"
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "results_page.py"),
            str(tmp_path / "runs" / "mnist_student"),
            "--root",
            str(REPO),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    page = out.read_text()
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    stamps = re.findall(r"^Written (20\d\d-\d\d-\d\d \d\d:\d\d) UTC from commit `([0-9a-f]+)`", page, re.M)
    assert len(stamps) == 1 and stamps[0][1] == head, page
    assert f"on {host['cpu']} ({host['cores']} cores)" in page
    assert page.count(host["cpu"]) == 1  # the host is stamped once, not per recipe
    assert "tools/results_page.py" in page and "## mnist_student" in page
    assert "| student_qat/int8 | int8 (QAT) | 28.6 KB | 23.0 KB | 23,236 | 0.44 M | 99.20 % | 99.41 % | -0.04 |" in page
    assert "| student_qat/int8 | 99.36 % [emu] | 1.15 M [emu] | 15.0 [emu] | 66.7 [emu] | 73.7 KB [emu] |" in page
    assert "fits" in page and "[emu] TFLite Micro + CMSIS-NN" in page  # the tags and their legend
    assert page.index("### Cortex-M4 (emulated)") < page.index("### This host")  # the target leads
    assert "gate PASSED: student_qat/int8 loses 0.02 validation points against student_scratch/float32" in page


def test_results_page_refuses_a_report_from_another_machine(tmp_path):
    _write_report(tmp_path, "Some Other CPU 9000")
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "results_page.py"),
            "--root",
            str(tmp_path),
            "-o",
            str(tmp_path / "results.md"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and not (tmp_path / "results.md").exists()
    assert p.stderr.count("\n") == 1 and "Some Other CPU 9000" in p.stderr and "fix:" in p.stderr
