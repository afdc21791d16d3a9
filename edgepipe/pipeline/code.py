"""What a stage's code version is made of, derived from the source: its module and everything it imports.

A stage's cache key must change whenever code that can change its output changes. Hand-kept lists of
modules drift (they did: editing `litert.py` did not make a bundle stage stale), so the list is read from
the imports instead: the module that defines the stage's `run`, and the transitive closure of the
edgepipe modules it imports, at module level or inside functions, found statically with `ast` (nothing
is imported, so no TensorFlow is loaded to compute a key). The third-party libraries those modules
import whose behaviour shapes outputs (TensorFlow, tf_keras, tfmot, LiteRT, TFLite Micro) join the key
with their installed versions.

The same graph is what `tests/test_architecture.py` checks for cycles and for stages importing stages.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
from pathlib import Path

from edgepipe.core import fsio

PACKAGE = "edgepipe"
ROOT = Path(__file__).resolve().parents[1]  # the edgepipe package folder

# top-level import name -> the distribution whose version is part of the key of a stage that imports it
LIBRARIES = {
    "tensorflow": "tensorflow",
    "tf_keras": "tf-keras",
    "tensorflow_model_optimization": "tensorflow-model-optimization",
    "tensorflow_datasets": "tensorflow-datasets",
    "ai_edge_litert": "ai-edge-litert",
    "tflite_micro": "tflite-micro",
}


def module_file(name: str) -> Path | None:
    """The source file of edgepipe module `name` (a package's `__init__.py`), or None if there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(edgepipe modules, third-party top-level packages) that module `name` imports, anywhere in it.

    `from edgepipe.core import fsio` is an import of `edgepipe.core.fsio` (a module), `from
    edgepipe.core.errors import EdgepipeError` one of `edgepipe.core.errors`. The parent packages Python
    imports on the way are not counted: their `__init__` files run, but hold no stage code.
    """
    path = module_file(name)
    if path is None:
        return frozenset(), frozenset()
    st = path.stat()
    return _imports(name, str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=None)
def _imports(name: str, file: str, mtime_ns: int, size: int) -> tuple[frozenset[str], frozenset[str]]:
    """imports_of's parse, cached while the file's (mtime, size) stay the same."""
    path = Path(file)
    ours, theirs = set(), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [(base, alias.name) for alias in node.names]
        else:
            continue
        for module, member in targets:
            top = module.split(".")[0]
            if top != PACKAGE:
                theirs.add(top)
                continue
            submodule = f"{module}.{member}" if member else None
            if submodule and module_file(submodule):
                ours.add(submodule)
            elif module_file(module):
                ours.add(module)
    ours.discard(name)
    return frozenset(ours), frozenset(theirs)


def closure(name: str) -> list[str]:
    """`name` and every edgepipe module it imports, directly or through others, sorted."""
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m in seen or module_file(m) is None:
            continue
        seen.add(m)
        todo.extend(imports_of(m)[0])
    return sorted(seen)


def code_files(name: str) -> dict[str, str]:
    """Path (relative to the package's parent) -> SHA-256 of every source file in `closure(name)`."""
    return {module_file(m).relative_to(ROOT.parent).as_posix(): fsio.sha256_file(module_file(m)) for m in closure(name)}


def libraries(name: str) -> dict[str, str | None]:
    """Distribution -> installed version of the output-shaping libraries `closure(name)` imports."""
    used = set().union(*(imports_of(m)[1] for m in closure(name)))
    out = {}
    for top in sorted(used & set(LIBRARIES)):
        try:
            out[LIBRARIES[top]] = importlib.metadata.version(LIBRARIES[top])
        except importlib.metadata.PackageNotFoundError:
            out[LIBRARIES[top]] = None
    return out


def graph() -> dict[str, frozenset[str]]:
    """Every edgepipe module -> the edgepipe modules it imports (the package's import graph)."""
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        names.append(".".join(parts))
    return {n: imports_of(n)[0] for n in names}
