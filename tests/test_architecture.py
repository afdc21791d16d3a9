"""The package's floor plan, read from its imports (ast, no TensorFlow): one way, no cycles, stages as siblings.

Imports run cli -> pipeline -> stages -> (training, export, targets) -> datasets -> tasks -> core; within
the lower wings, training and targets may use datasets (the artifact a bench reads) and tasks (what a model's
outputs mean), datasets may use tasks (the targets a model is trained to output), and export may use datasets
and targets (it reads the .tflite it writes with the host's LiteRT, as a device would; devices never need
Keras, so targets does not import export); a search uses training, export and targets. No stage module
imports another: what two stages share lives in a lower wing.
And a device's kind is its backend's business: nothing else compares a profile's kind, reach or measure.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from edgepipe.pipeline import code
from edgepipe.targets.profiles import Target

# wing -> the wings it may import (besides itself)
ALLOWED = {
    "core": set(),
    "tasks": {"core"},
    "datasets": {"core", "tasks"},
    "training": {"core", "datasets", "tasks"},
    "targets": {"core", "datasets", "tasks"},
    "export": {"core", "datasets", "tasks", "targets"},  # reads back the .tflite it writes with the host's LiteRT
    "search": {"core", "datasets", "tasks", "training", "export", "targets"},
    "stages": {"core", "datasets", "tasks", "training", "export", "targets", "search"},
    "pipeline": {"core", "stages", "targets"},
    "cli": {"core", "pipeline", "stages", "targets", "training", "datasets", "edgepipe"},
    # tests drive the cli
    "testing": {"core", "datasets", "tasks", "pipeline", "stages", "training", "export", "targets", "search", "cli"},
    "edgepipe": {"core", "pipeline"},  # the package face re-exports the public names
}
STAGE_TO_STAGE: set[tuple[str, str]] = set()  # none: DistillParams(TrainParams) both live in training


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a closed path."""
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def stage_modules(graph) -> set[str]:
    return {
        m for m in graph if m.startswith("edgepipe.stages.") and "KIND = StageKind(" in code.module_file(m).read_text()
    }


def violations(graph: dict[str, frozenset[str]]) -> list[str]:
    """Imports against the floor plan: a wing reaching above itself, or a stage importing a stage."""
    found = []
    stages = stage_modules(graph)
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            if wing(dst) != wing(src) and wing(dst) not in ALLOWED.get(wing(src), set()):
                found.append(f"{src} -> {dst} ({wing(src)} may not import {wing(dst)})")
            if src in stages and dst in stages and (src, dst) not in STAGE_TO_STAGE:
                found.append(f"{src} -> {dst} (a stage imports another stage)")
    return found


def test_the_package_has_no_import_cycle():
    found = cycles(code.graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(g) for g in found)


def test_imports_run_one_way_and_stages_are_siblings():
    found = violations(code.graph())
    assert not found, "\n".join(found)


def test_the_checks_see_what_they_must_refuse():
    """The two checks catch a planted cycle and a planted stage -> stage import (they can fail)."""
    planted = {
        "edgepipe.stages.bench": frozenset({"edgepipe.stages.convert"}),
        "edgepipe.stages.convert": frozenset({"edgepipe.stages.registry"}),
        "edgepipe.stages.registry": frozenset({"edgepipe.stages.bench"}),
        "edgepipe.core.fsio": frozenset({"edgepipe.targets.litert"}),
        "edgepipe.targets.tflm": frozenset({"edgepipe.export.sidecar"}),
    }
    assert cycles(planted) == [["edgepipe.stages.bench", "edgepipe.stages.convert", "edgepipe.stages.registry"]]
    found = violations({**code.graph(), **planted})
    assert "edgepipe.stages.bench -> edgepipe.stages.convert (a stage imports another stage)" in found
    assert "edgepipe.core.fsio -> edgepipe.targets.litert (core may not import targets)" in found
    assert "edgepipe.targets.tflm -> edgepipe.export.sidecar (targets may not import export)" in found


def test_the_graph_sees_imports_inside_functions():
    # the SSH backend imports edgetpu and remote only inside its methods
    assert {"edgepipe.targets.edgetpu", "edgepipe.targets.remote"} <= code.imports_of("edgepipe.targets.backends.ssh")[
        0
    ]


# What a Target's kind, reach and measure can be (their Literal choices): a comparison with one of these
# values is a comparison of a device kind. A stage's kind ("train"), a schedule's ("step"), a dtype's
# ("f") or a bench's own `measure` param ("profile") are other things with the same attribute name.
DEVICE_FACTS = ("kind", "reach", "measure")
BACKENDS = code.ROOT / "targets" / "backends"


def _choices(annotation) -> set[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return set().union(set(), *(_choices(a) for a in typing.get_args(annotation)))


DEVICE_VALUES = set().union(*(_choices(typing.get_type_hints(Target)[f]) for f in DEVICE_FACTS))


def _constants(node: ast.expr) -> set:
    if isinstance(node, ast.Constant):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(set(), *(_constants(e) for e in node.elts))
    return set()


def _fact(node: ast.expr) -> str | None:
    """The device fact `node` reads, else None: `target.kind` (an attribute), `reach` or `target_kind` (a
    name), or a profile as a dict, as bench.json keeps it (`t["kind"]`, `t.get("measure")`)."""
    if isinstance(node, ast.Subscript):
        name = node.slice.value if isinstance(node.slice, ast.Constant) else None
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        name = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
    else:
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
    if not isinstance(name, str):
        return None
    return name if name in DEVICE_FACTS or name.endswith(tuple(f"_{f}" for f in DEVICE_FACTS)) else None


def kind_comparisons(source: str, where: str) -> list[str]:
    """Each comparison of a device fact (`x.kind`, `x.reach`, `x.measure`, a variable of that name or ending
    in it, or that key of a dict) with one of a Target's values for them, in an expression or a `match`, as
    `where:line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_fact(o) for o in operands) and any(_constants(o) & DEVICE_VALUES for o in operands):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Match) and _fact(node.subject):
            values = {
                p.value.value
                for p in ast.walk(node)
                if isinstance(p, ast.MatchValue) and isinstance(p.value, ast.Constant)
            }
            if values & DEVICE_VALUES:
                found.append((node.lineno, f"match {ast.unparse(node.subject)}"))
    return [f"{where}:{line}: {what}" for line, what in sorted(found)]


def device_kind_violations() -> list[str]:
    found = []
    for path in sorted(code.ROOT.rglob("*.py")):
        if BACKENDS not in path.parents:
            found += kind_comparisons(path.read_text(), path.relative_to(code.ROOT.parent).as_posix())
    return found


def test_only_backends_compare_a_device_kind():
    """Adding a kind of device is one backend module and one registry line: no stage, search or pipeline
    module branches on a profile's kind, reach or measure."""
    found = device_kind_violations()
    assert not found, "compare device kinds in edgepipe/targets/backends only:\n" + "\n".join(found)


def test_the_kind_check_sees_what_it_must_refuse():
    """The check catches comparisons of a device fact however they are written, and leaves a stage's,
    a schedule's, a dtype's and a bench param's own `kind` and `measure` alone."""
    assert {"cpu", "mcu", "ssh", "local", "emulated", "estimate"} <= DEVICE_VALUES
    planted = "\n".join(
        [
            'if target.kind == "mcu": pass',
            'if self.target.measure != "emulated": pass',
            'if profile.reach in ("ssh", "adb"): pass',
            'if "edgetpu" == t.kind: pass',
            'if reach != "ssh": pass',
            'if stage.kind == "train" or s.kind == "step" or x.dtype.kind == "f": pass',
            'if params.measure != "profile" and target.measure is None: pass',
            "if target.kind == other.kind: pass",
            'match target.reach:\n    case "adb": pass',
            'match schedule.kind:\n    case "cosine": pass',
            'if t.get("kind") == "mcu" or m["measure"] != "estimate": pass',
            'if target_kind == "edgetpu" or spec["kind"] == "constant" or stage_kind == "train": pass',
        ]
    )
    assert kind_comparisons(planted, "planted.py") == [
        "planted.py:1: target.kind == 'mcu'",
        "planted.py:2: self.target.measure != 'emulated'",
        "planted.py:3: profile.reach in ('ssh', 'adb')",
        "planted.py:4: 'edgetpu' == t.kind",
        "planted.py:5: reach != 'ssh'",
        "planted.py:9: match target.reach",
        "planted.py:13: m['measure'] != 'estimate'",
        "planted.py:13: t.get('kind') == 'mcu'",
        "planted.py:14: target_kind == 'edgetpu'",
    ]
    assert BACKENDS.is_dir() and Path(code.module_file("edgepipe.targets.backends")).parent == BACKENDS
