"""Project config: `edgepipe.toml` at the project root, or `[tool.edgepipe]` in its `pyproject.toml`.

What a project sets once instead of exporting before every command: where the offline dataset mirror
is, the default target and the addresses of its devices, the tracking server, the run cache's bound.
Every command reads it (the CLI once, at start; `edgepipe.run` too), so `edgepipe bench ...` typed after
`make recipe=...` sees what make saw. It is found by walking up from the current folder to the first
folder holding `edgepipe.toml` or `pyproject.toml`, and validated as strictly as a recipe: an unknown key
or a bad value is one error line naming the file, the key and the valid choices. An environment variable
still wins over the file (EDGEPIPE_DATA_MIRROR).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Iterator

from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.params import build, param
from edgepipe.targets.backends import backend_for
from edgepipe.targets.profiles import load_target
from edgepipe.targets.remote import HOST

FILE = "edgepipe.toml"
MIRROR_ENV = "EDGEPIPE_DATA_MIRROR"  # the data stage's search path (edgepipe.datasets.sources)
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*$", re.IGNORECASE)
UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1024,
    "M": 1024**2,
    "MB": 1024**2,
    "G": 1024**3,
    "GB": 1024**3,
    "T": 1024**4,
    "TB": 1024**4,
}
BARE_URIS = ("databricks", "databricks-uc", "uc")  # tracking URIs MLflow takes without a scheme; a folder otherwise
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")


@dataclasses.dataclass
class ProjectConfig:
    """The keys of edgepipe.toml (or [tool.edgepipe]), each with its default and meaning."""

    data_mirror: list[str] | str = param(
        [],
        "folders searched for dataset files before any download (relative "
        "to the config file); $EDGEPIPE_DATA_MIRROR wins over it",
    )
    target: str | None = param(
        None,
        "target of the bench and bundle stages that name none, when the recipe has "
        "no target: (a profile name or a .yaml file); --target wins",
    )
    hosts: dict[str, str] = param(
        {}, "target name -> user@address[:port] of that device, for SSH targets; --host and a stage's host param win"
    )
    tracking_uri: str | None = param(
        None,
        "MLflow tracking URI (a server, or a folder relative to the config file) of runs that track; "
        "--track URI, the recipe's tracking.uri and $EDGEPIPE_TRACKING_URI / $MLFLOW_TRACKING_URI win",
    )
    run_cache_size: int | str = param(
        "2 GB", "bytes each recipe's run cache may hold (e.g. 500 MB, 10 GB); 0 turns the run cache off"
    )
    path: Path | None = None  # the file it was read from (not a key)

    def __post_init__(self):
        if isinstance(self.data_mirror, str):
            self.data_mirror = [self.data_mirror]
        _size(self.run_cache_size)
        if self.tracking_uri is not None and (
            not self.tracking_uri.strip() or "://" in self.tracking_uri and not URI.match(self.tracking_uri)
        ):
            raise ValueError(
                f"tracking_uri {self.tracking_uri!r} is neither a URI nor a folder; fix: e.g. "
                "http://localhost:5000, file:///srv/mlruns or mlruns"
            )
        for name, host in self.hosts.items():
            if not HOST.match(host):
                raise ValueError(f"hosts.{name}: {host!r} is not user@address[:port]; fix: e.g. pi@192.168.1.20")

    @property
    def tracking_store(self) -> str | None:
        """`tracking_uri` as the tracker takes it: a URI as written, a folder made absolute from the config
        file's folder (so every command, from any subfolder, tracks into the same store)."""
        uri = self.tracking_uri
        if uri is None or uri in BARE_URIS or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri):
            return uri
        base = self.path.parent if self.path else Path.cwd()
        return os.path.abspath(base / Path(uri).expanduser())

    @property
    def cache_bytes(self) -> int:
        return _size(self.run_cache_size)

    @property
    def mirrors(self) -> list[Path]:
        """The data mirror folders, relative ones taken from the config file's folder, normalised (`a/../b`
        is `b`: the dataset's file paths are part of the data stage's key, as the Makefile's abspath made them)."""
        base = self.path.parent if self.path else Path.cwd()
        return [Path(os.path.abspath(base / Path(m).expanduser())) for m in self.data_mirror]


KEYS = tuple(f.name for f in dataclasses.fields(ProjectConfig) if f.name != "path")


def find(start: Path | None = None) -> tuple[Path, dict] | None:
    """(the config file, its edgepipe table) of the project around `start` (the current folder), or None."""
    here = Path(start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        own, pyproject = folder / FILE, folder / "pyproject.toml"
        table = _read(pyproject).get("tool", {}).get("edgepipe") if pyproject.is_file() else None
        if own.is_file():
            if table is not None:
                raise RecipeError(
                    f"{own} and [tool.edgepipe] in {pyproject} both configure this project", "keep one of them"
                )
            return own, _read(own)
        if table is not None:
            if not isinstance(table, dict):
                raise RecipeError(f"{pyproject}: tool.edgepipe must be a table", "write it as [tool.edgepipe]")
            return pyproject, table
        if pyproject.is_file():
            return None  # the project root, which configures nothing
    return None


def load(start: Path | None = None) -> ProjectConfig:
    """The validated project config (all defaults when there is none).

    Raises:
        RecipeError: an unreadable file, an unknown key or a bad value, naming the file and the key.
    """
    found = find(start)
    if found is None:
        return ProjectConfig()
    path, table = found
    where = f"{path}: [tool.edgepipe]" if path.name == "pyproject.toml" else str(path)
    unknown = [k for k in table if k not in KEYS]
    if unknown:
        raise RecipeError(f"{where}: unknown key '{unknown[0]}'", f"use one of: {', '.join(KEYS)}")
    try:
        config = build(ProjectConfig, table, where)
    except RecipeError as e:  # `where.key` is how a recipe's params read; a config file reads `where: key`
        message = e.message.replace(f"{where}.", f"{where}: ", 1)
        raise RecipeError(message, e.fix) from None
    config.path = path
    if config.target is not None:
        try:
            load_target(config.target)
        except EdgepipeError as e:
            raise RecipeError(f"{where}: target: {e.message}", e.fix) from None
    for name in config.hosts:
        try:
            profile = load_target(name)
            takes_host = backend_for(profile).takes_host
        except EdgepipeError as e:
            raise RecipeError(f"{where}: hosts.{name}: {e.message}", e.fix) from None
        if not takes_host:
            raise RecipeError(
                f"{where}: hosts.{name}: target {name} is not reached over SSH (reach: {profile.reach})",
                "give hosts only for SSH targets (rpi4, rpi5, coral, or a profile with reach: ssh)",
            )
    return config


@contextlib.contextmanager
def environment(config: ProjectConfig) -> Iterator[None]:
    """The config's environment for the stages (the data mirror) while the block runs, unless the
    environment already says otherwise; restored after."""
    before = os.environ.get(MIRROR_ENV)
    if not config.mirrors or before:
        yield
        return
    os.environ[MIRROR_ENV] = os.pathsep.join(str(m) for m in config.mirrors)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MIRROR_ENV, None)
        else:
            os.environ[MIRROR_ENV] = before


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: malformed TOML: {e}", "fix the TOML syntax there") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text", "save it as UTF-8") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read: {e.strerror}", "check its permissions") from None


def _size(value) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= 0:
        return value
    m = SIZE.match(value) if isinstance(value, str) else None
    if m is None or m.group(2).upper() not in UNITS:
        raise ValueError(
            f"run_cache_size {value!r} is not a size; fix: write bytes (e.g. 0, 500000000) or a size "
            'such as "500 MB" or "10 GB"'
        )
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])
