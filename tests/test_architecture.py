"""The package's floor plan, read from its imports (ast, no TensorFlow): one way, no cycles, stages as siblings.

Imports run cli -> pipeline -> stages -> (training, datasets, targets) -> core; within the lower wings,
training may use datasets, and targets may use datasets (the artifact a bench reads); a search uses
training and targets. No stage module imports another: what two stages share lives in a lower wing.
"""

from __future__ import annotations

from edgepipe.pipeline import code

# wing -> the wings it may import (besides itself)
ALLOWED = {
    "core": set(),
    "datasets": {"core"},
    "training": {"core", "datasets"},
    "targets": {"core", "datasets"},
    "search": {"core", "datasets", "training", "targets"},
    "stages": {"core", "datasets", "training", "targets", "search"},
    "pipeline": {"core", "stages", "targets"},
    "cli": {"core", "pipeline", "stages", "targets", "training", "datasets", "edgepipe"},
    "testing": {"core", "datasets", "pipeline", "stages", "training", "targets", "search", "cli"},  # tests drive the cli
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
    return {m for m in graph if m.startswith("edgepipe.stages.") and "KIND = StageKind(" in
            code.module_file(m).read_text()}


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
    planted = {"edgepipe.stages.bench": frozenset({"edgepipe.stages.convert"}),
               "edgepipe.stages.convert": frozenset({"edgepipe.stages.registry"}),
               "edgepipe.stages.registry": frozenset({"edgepipe.stages.bench"}),
               "edgepipe.core.fsio": frozenset({"edgepipe.targets.litert"})}
    assert cycles(planted) == [["edgepipe.stages.bench", "edgepipe.stages.convert", "edgepipe.stages.registry"]]
    found = violations({**code.graph(), **planted})
    assert "edgepipe.stages.bench -> edgepipe.stages.convert (a stage imports another stage)" in found
    assert "edgepipe.core.fsio -> edgepipe.targets.litert (core may not import targets)" in found


def test_the_graph_sees_imports_inside_functions():
    # the SSH backend imports edgetpu and remote only inside its methods
    assert {"edgepipe.targets.edgetpu", "edgepipe.targets.remote"} <= \
        code.imports_of("edgepipe.targets.backends.ssh")[0]
