"""Tracking runs in MLflow: what each stage was given and made, logged after it finishes.

Turned on by a recipe's `tracking:` block or `edgepipe run --track [URI]`. One MLflow run per `edgepipe run`
(named after the recipe, tagged with the host), and under it one nested run per stage: its parameters;
for a training-type stage the per-epoch history, the test and validation figures and the model; for a
convert (or imported) stage the `.tflite` files with their sidecars; for a report one more nested run per
row, with the row's figures and its `.tflite`. The run's own metrics are each row's headline figures
(`<row>/val_accuracy`, ...), so MLflow compares runs by them.

Tracking reads the stages' outputs once they are in place and writes nothing under `runs/`: it never enters
a cache key or a digest, so a run with tracking has the same keys as one without. MLflow is an optional
extra (`pip install -e .[mlflow]`); a tracking URI that cannot be reached is one warning, and the run
goes on without tracking.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import platform
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from edgepipe.core import ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param, to_dict

log = logging.getLogger(__name__)

URI_ENV = ("EDGEPIPE_TRACKING_URI", "MLFLOW_TRACKING_URI")  # read in this order when no URI is given
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
INSTALL = "pip install -e .[mlflow]"
# While tracking: a server that does not answer fails in seconds, not after MLflow's minutes of retries.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# What a stage's output holds that is worth keeping beside its figures, by what the stage outputs.
ARTIFACTS = {
    "dataset": ("dataset.json",),
    "model": ("model.h5", "metrics.json", "history.csv", "curves.png"),
    "bench": ("bench.json",),
    "report": ("report.md", "report.json", "pareto.png", "report.html"),
}
ROW_METRICS = (
    "val_accuracy",
    "accuracy",
    "delta_points",
    "size_bytes",
    "params",
    "macs",
    "latency_p50_us",
    "latency_p99_us",
    "fps",
    "arena_bytes",
)


@dataclasses.dataclass
class TrackingParams:
    """A recipe's `tracking:` block."""

    enabled: bool = param(True, "log each `edgepipe run` of this recipe to MLflow")
    uri: str | None = param(
        None,
        "MLflow tracking URI (null: --track URI, $EDGEPIPE_TRACKING_URI, "
        "$MLFLOW_TRACKING_URI, else sqlite:///<root>/mlruns/mlflow.db)",
    )
    experiment: str | None = param(None, "MLflow experiment name (null: the recipe's name)")

    def __post_init__(self):
        if self.uri is not None:
            check_uri(self.uri, "uri")
        if self.experiment is not None and (
            not self.experiment.strip() or len(self.experiment) > 250 or any(ord(c) < 32 for c in self.experiment)
        ):
            raise ValueError(
                f"experiment {self.experiment!r} is not a usable MLflow experiment name; fix: give a "
                "name of 1 to 250 printable characters, or null for the recipe's name"
            )


def check_uri(uri: str, what: str) -> str:
    """A tracking URI as MLflow takes it (`scheme:...` or a path), or a ValueError naming `what`."""
    scheme = uri.split(":", 1)[0] if ":" in uri else None
    if (
        not uri.strip()
        or any(c.isspace() for c in uri)
        or (scheme is not None and len(scheme) > 1 and not SCHEME.match(scheme))
    ):
        raise ValueError(
            f"{what} {uri!r} is not a tracking URI; fix: e.g. sqlite:///mlruns/mlflow.db, "
            "http://mlflow.example.com:5000 or databricks"
        )
    return uri


class Tracker:
    """One `edgepipe run` as an MLflow run, each stage a nested run under it."""

    def __init__(self, client, uri: str, experiment_id: str, run_id: str, recipe, run_dir: Path):
        self.client, self.uri, self.experiment_id, self.run_id = client, uri, experiment_id, run_id
        self.recipe, self.run_dir = recipe, run_dir
        self.stopped: str | None = None  # why tracking stopped mid-run

    def stage(self, stage, action: str) -> None:
        """Log a stage that ran or was up to date: its params, figures and artifacts (see the module doc)."""
        if self.stopped:
            return
        with self._quiet(f"stage '{stage.name}'"):
            out = self.run_dir / stage.name
            output = stage.kind.produces(stage.params)
            run = self.client.create_run(
                self.experiment_id,
                run_name=stage.name,
                tags={
                    "mlflow.parentRunId": self.run_id,
                    "edgepipe.kind": stage.kind.name,
                    "edgepipe.action": action,
                    "edgepipe.stage": stage.name,
                },
            )
            rid = run.info.run_id
            self._log(rid, params=_flat(to_dict(stage.params)))
            for name in ARTIFACTS.get(output, ()):
                if (out / name).is_file():
                    self.client.log_artifact(rid, str(out / name))
            if output == "model":
                self._log(rid, metrics=_history(out / "history.csv") + _model_metrics(out / "metrics.json"))
            if output == "tflite":
                for f in sorted(out.glob("*.tflite")):
                    self.client.log_artifact(rid, str(f), "tflite")
                    if f.with_suffix(".json").is_file():
                        self.client.log_artifact(rid, str(f.with_suffix(".json")), "tflite")
                    self._log(rid, metrics=[(f"{f.stem}/size_bytes", f.stat().st_size, 0)])
            if output == "report":
                self._report_rows(stage, out, rid)
            self.client.set_terminated(rid)

    def finish(self, ok: bool) -> str:
        """Close the run; the line the runner prints about it."""
        if self.stopped:
            return f"tracking stopped: {self.stopped}"
        with self._quiet("the run"):
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
        if self.stopped:
            return f"tracking stopped: {self.stopped}"
        return f"tracked in MLflow at {self.uri}: experiment {self.experiment_id}, run {self.run_id}"

    def _report_rows(self, stage, out: Path, parent: str) -> None:
        """One nested run per report row: its figures, and its .tflite and sidecar; the headline figures on
        the run of the whole `edgepipe run` too."""
        report = json.loads((out / "report.json").read_text())
        files = self._tflite_files(stage)
        headline = []
        for row in report.get("rows", []):
            rid = self.client.create_run(
                self.experiment_id,
                run_name=row["name"],
                tags={
                    "mlflow.parentRunId": parent,
                    "edgepipe.row": row["name"],
                    "edgepipe.quantization": str(row.get("quantization")),
                },
            ).info.run_id
            figures = [
                (k if k != "accuracy" else "test_accuracy", row[k], 0)
                for k in ROW_METRICS
                if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
            ]
            self._log(rid, metrics=figures)
            headline += [
                (f"{row['name']}/{k}", v, 0)
                for k, v, _ in figures
                if k in ("val_accuracy", "test_accuracy", "size_bytes", "latency_p50_us")
            ]
            path = files.get(row["name"])
            if path is not None:
                self.client.log_artifact(rid, str(path), "tflite")
                if path.with_suffix(".json").is_file():
                    self.client.log_artifact(rid, str(path.with_suffix(".json")), "tflite")
            self.client.set_terminated(rid)
        self._log(self.run_id, metrics=headline)

    def _tflite_files(self, report_stage) -> dict[str, Path]:
        """Report row name -> the .tflite it measured (from the benches' rows and the stages they read)."""
        files = {}
        for bench in report_stage.inputs.get("benches", []):
            bench_json = self.run_dir / bench / "bench.json"
            if not bench_json.is_file():
                continue
            dirs = [self.run_dir / m for m in self.recipe.stages[bench].inputs.get("models", [])]
            for row in json.loads(bench_json.read_text()).get("rows", []):
                found = [d / row["file"] for d in dirs if (d / row["file"]).is_file()]
                if found:
                    files.setdefault(row["name"], found[0])
        return files

    def _log(self, run_id: str, params: dict | None = None, metrics: list | None = None) -> None:
        """Params and (key, value, step) metrics in batches of MLflow's limits."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])
        ms = [Metric(_metric_key(k), float(v), now, int(step)) for k, v, step in metrics or ()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i : i + 1000])

    @contextlib.contextmanager
    def _quiet(self, what: str) -> Iterator[None]:
        """MLflow's calls without its log lines and warnings; a failure stops tracking with one warning."""
        try:
            with _mlflow_quiet():
                yield
        except Exception as e:  # noqa: BLE001 - a tracking server failing must not fail the run
            self.stopped = f"logging {what} to {self.uri} failed ({_reason(e)})"
            ui.warn(f"{self.stopped}; tracking stopped, the run goes on")


def start(recipe, root: Path, track: str | None, configured: str | None = None) -> Tracker | None:
    """The tracker of this run, or None when tracking is off.

    Args:
        recipe: the loaded recipe (its `tracking` block, if any).
        root: the project folder (runs/, models/ and the default `mlruns/`).
        track: `--track`: None (as the recipe says), "" (on, the URI as the recipe or environment says),
            or a URI.
        configured: the project config's `tracking_uri` (`ProjectConfig.tracking_store`), used when none
            of those nor the environment gives one; a folder there is a store like the default one.

    Raises:
        EdgepipeError: tracking is on and MLflow is not installed, or `--track` is not a URI.
    """
    block = getattr(recipe, "tracking", None)
    if track is None and (block is None or not block.enabled):
        return None
    if track:
        try:
            check_uri(track, "--track")
        except ValueError as e:
            problem, _, fix = str(e).partition("; fix: ")
            raise EdgepipeError(problem, fix, exit_code=2) from None
    try:
        with _mlflow_quiet():
            from mlflow.tracking import MlflowClient
    except ImportError:
        raise EdgepipeError(
            "tracking is on, but MLflow is not installed",
            f"{INSTALL} (or drop --track and the recipe's tracking block)",
        ) from None
    uri = track or (block.uri if block else None) or next((os.environ[v] for v in URI_ENV if os.environ.get(v)), None)
    artifacts = store = None
    if uri is None and configured is not None and Path(configured).is_absolute():
        store = Path(configured)  # the config's folder (tracking_store made it absolute)
    elif uri is None:
        uri = configured
    if uri is None or store is not None:  # MLflow's file store refuses new runs since 3.x; its own default is SQLite
        store = store or Path(root).resolve() / "mlruns"
        uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
    name = (block.experiment if block else None) or recipe.name
    try:
        with _mlflow_quiet():
            if store is not None:
                store.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(name, artifact_location=artifacts)
            )
            run = client.create_run(
                experiment_id,
                run_name=f"{recipe.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                tags={"edgepipe.recipe": str(recipe.path), "edgepipe.host": platform.node()},
            )
    except Exception as e:  # noqa: BLE001 - MLflow, SQLAlchemy and requests each raise their own
        ui.warn(f"tracking skipped: MLflow at {uri} cannot be reached ({_reason(e)}); the run goes on without it")
        return _Skipped(uri)
    return Tracker(client, uri, experiment_id, run.info.run_id, recipe, Path(root) / "runs" / recipe.name)


class _Skipped:
    """Tracking was asked for and its URI could not be reached: the run goes on and says so at the end."""

    def __init__(self, uri: str):
        self.uri = uri

    def stage(self, stage, action: str) -> None:
        pass

    def finish(self, ok: bool) -> str:
        return f"tracking skipped: MLflow at {self.uri} could not be reached"


@contextlib.contextmanager
def _mlflow_quiet() -> Iterator[None]:
    """MLflow's INFO lines (database set-up) and library warnings off; quick HTTP failures."""
    saved = {k: os.environ.get(k) for k in QUICK_HTTP}
    for k, v in QUICK_HTTP.items():
        os.environ.setdefault(k, v)
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic", "sqlalchemy", "urllib3")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _metric_key(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)[:250]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys (`early_stopping.patience`), lists as their JSON text."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return out


def _history(path: Path) -> list[tuple[str, float, int]]:
    """Per-epoch figures of history.csv (loss, accuracy, val_loss, val_accuracy, lr, ...) as (key, value, epoch)."""
    if not path.is_file():
        return []
    out = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            step = int(float(row.get("epoch") or i))
            for k, v in row.items():
                if k in ("epoch", None):
                    continue
                try:
                    out.append((k, float(v), step))
                except (TypeError, ValueError):
                    continue  # a text column (a transfer's phase)
    return out


def _model_metrics(path: Path) -> list[tuple[str, float, int]]:
    """The test and final validation figures, size and epochs of a model stage's metrics.json."""
    if not path.is_file():
        return []
    m = json.loads(path.read_text())
    out = []
    for split, prefix in (("test", "test_"), ("val", "final_val_")):  # val_* per epoch are the history's
        for k in ("accuracy", "loss"):
            v = (m.get(split) or {}).get(k)
            if isinstance(v, (int, float)):
                out.append((f"{prefix}{k}", v, 0))
    out += [(k, m[k], 0) for k in ("params", "macs", "epochs_run") if isinstance(m.get(k), (int, float))]
    return out
