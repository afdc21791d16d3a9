"""The search stage: the most accurate model that fits the target's budget, found with Optuna, measured.

Each trial sets the searched values (`edgepipe.search.space`) into a train stage's parameters, builds
the model and, when there are budgets, first measures the untrained architecture on the target (a
trial over budget is not trained: latency, flash and RAM depend on the architecture, not on the
weights). It then trains on the train split (distilling from the `teacher` input when the trial says
so), pruned early by its validation accuracy per epoch, converts to int8 and is judged on the whole
validation split (never test) and on its figures on the target, measured from that int8 file
(`edgepipe.search.figures`). Budgets (`max_latency_ms`, `max_flash_bytes`, `max_ram_bytes`,
`min_val_accuracy`) are Optuna constraints; `reference` budgets are the `reference` input's int8
model measured the same way in the same run.

The chosen model, the feasible trial best on `pick` (retrained for `final_epochs` if given), is the
stage's output like a train stage's (`model.h5`, `metrics.json`, ...), so qat, convert, bench and
bundle follow it unchanged; beside it: `trials.csv`, `front.json`, `pareto.png` and `search.json`.
The study is kept in an Optuna storage (`edgepipe.search.study`): a killed search resumes, and
`edgepipe worker RECIPE STAGE` adds a process (on this machine, or on another with `storage:`).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe.core import fsio, progress, ui
from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.params import build, key_text, param, to_dict
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import Dataset, load_dataset
from edgepipe.search import figures as target_figures
from edgepipe.search import front, study
from edgepipe.search.space import (AUGMENT_SCALE, SCALED_AUGMENT, TEACHER, Dimension, fingerprint, sample,
                                   trial_params, uses_teacher)
from edgepipe.targets.profiles import load_target
from edgepipe.training import nets
from edgepipe.training.distill import DistillParams
from edgepipe.training.modelio import load_model, save_model

Objective = Literal["val_accuracy", "latency_ms", "instructions", "flash_bytes", "ram_bytes", "params"]
BUDGETS = {"max_latency_ms": "latency_ms", "max_flash_bytes": "flash_bytes", "max_ram_bytes": "ram_bytes"}


@dataclasses.dataclass
class SearchParams:
    """Parameters of the search stage."""

    train: dict[str, Any] = param({}, "each trial's train parameters, as a train (or distill) stage's params, "
                                  "before the searched values are set; its epochs are each trial's budget")
    space: dict[str, Dimension] = param({}, "searched parameters: a dotted path into train (arch_args.widths.0, "
                                        "lr), or teacher / augment_scale, each with choices or low/high")
    trials: int = param(20, "trials in all, shared by every process working on the study", min=1)
    target: str | None = param(None, "target profile the figures are measured on; null: the recipe's target, "
                               "else host")
    objectives: list[Objective] = param(["val_accuracy"], "what the sampler optimizes; val_accuracy alone "
                                        "prunes trials early, more objectives make it multi-objective (no pruning)")
    pick: Objective = param("val_accuracy", "which figure picks the chosen model among the feasible trials")
    max_latency_ms: float | Literal["reference"] | None = param(
        None, "budget: latency on the target (ms); reference: the reference input's", min=0.0)
    max_flash_bytes: int | Literal["reference"] | None = param(
        None, "budget: flash of the model with its runtime on the target; reference: the reference input's", min=1)
    max_ram_bytes: int | Literal["reference"] | None = param(
        None, "budget: RAM used on the target (arena, stack, runtime); reference: the reference input's", min=1)
    min_val_accuracy: float | None = param(None, "budget: the int8 model's validation accuracy at least this "
                                           "(0..1)", min=0.0, max=1.0)
    sampler: Literal["tpe", "nsga2", "random"] = param("tpe", "Optuna sampler")
    pruner: Literal["median", "hyperband", "none"] = param("median", "stops hopeless trials early on their "
                                                           "validation accuracy per epoch (single objective)")
    startup_trials: int = param(5, "random trials before the sampler models the space (and before pruning)", min=0)
    seed: int = param(0, "seed of the sampler (each trial's training seed is train.seed)")
    screen: bool = param(True, "measure each architecture untrained first and skip training it when over budget")
    measure_samples: int = param(4, "validation images run on the target per trial (instructions, latency)", min=1)
    representative_samples: int = param(200, "train images calibrating each trial's int8 conversion", min=10)
    final_epochs: int | None = param(None, "retrain the chosen configuration for this many epochs as the output "
                                     "(null: the chosen trial's own model)", min=1)
    compare_distillation: bool = param(False, "also train the chosen configuration the other way (with the "
                                       "teacher if it had none, without if it had): did distillation pay?")
    storage: str | None = param(None, "Optuna storage URL (postgresql://..., sqlite:///..., journal:/path) for "
                                "workers on other machines; null: a SQLite file in the stage's work folder")
    study: str | None = param(None, "study name in the storage; null: the stage's name")

    def __post_init__(self):
        if not self.space:
            raise ValueError("space is empty: nothing to search; fix: add e.g. lr: {low: 0.001, high: 0.01}")
        if len(self.objectives) != len(set(self.objectives)) or "val_accuracy" not in self.objectives:
            raise ValueError("objectives must list val_accuracy once, and any other figure once; fix: e.g. "
                             "[val_accuracy, latency_ms]")
        if len(self.objectives) > 1 and self.pruner != "none":
            raise ValueError("Optuna cannot prune a multi-objective study; fix: set pruner: none, or optimize "
                             "val_accuracy alone (the budgets still hold)")
        if self.storage is not None and (problem := study.check_url(self.storage)):
            raise ValueError(f"storage {self.storage!r} {problem}; fix: e.g. sqlite:////shared/study.db")
        check_space(self)

    def trial_train(self, values: dict[str, Any]) -> DistillParams:
        """The train parameters of one trial (validated: a bad value is one error line)."""
        return build(DistillParams, {**trial_params(self.train, values), "tensorboard": False}, "search trial")


def check_space(p: SearchParams) -> None:
    """Every searched value, each at its end of the range, makes valid train parameters; at load."""
    for path in ("folds", "strategy"):
        if path in p.train or path in p.space:
            raise ValueError(f"train.{path} is not available in a search (each trial trains one model); fix: drop it")
    if p.train.get("lr") == "auto" or "arch" not in p.train and "arch" not in p.space:
        raise ValueError("a search's train params need an arch (fixed or searched) and a numeric lr; fix: e.g. "
                         "train: {arch: strided_cnn, lr: 0.005}")
    try:
        p.trial_train({})
    except RecipeError as e:
        raise ValueError(f"train: {_unprefixed(e.message)}; fix: {e.fix}") from None
    archs = [p.train["arch"]] if "arch" in p.train else []
    for name, dim in p.space.items():
        for value in dim.values_to_check():
            if name == TEACHER:
                if not isinstance(value, bool):
                    raise ValueError(f"space.teacher: {value!r} is not true or false; fix: choices: [false, true]")
                continue
            if name == AUGMENT_SCALE:
                if not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"space.augment_scale: {value!r} is not a factor >= 0; fix: e.g. "
                                     "{low: 0.5, high: 1.5}")
                continue
            try:
                p.trial_train({name: value})
            except RecipeError as e:
                raise ValueError(f"space.{key_text(name)} = {value!r}: {_unprefixed(e.message)}; fix: {e.fix}") from None
            if name == "arch":
                archs.append(value)
    for arch in archs:
        try:
            nets.resolve(arch)  # an unknown architecture is one line at load, not in trial 7
        except EdgepipeError as e:
            raise ValueError(f"{'space' if 'arch' in p.space else 'train'}.arch: {e.message}; fix: {e.fix}") from None


def _unprefixed(message: str) -> str:
    """A train-params error as the user wrote it: `lr: ...`, not `search trial.lr: ...`."""
    return message.removeprefix("search trial: ").removeprefix("search trial.")


def run_search_stage(params: SearchParams, io: StageIO) -> str:
    """Run the study (resuming it), choose, write the chosen model and the search's tables."""
    s = _Search(params, io)
    s.run_trials(create=True)
    study.wait_for_others(s.study)
    return s.finish()


def join_search(params: SearchParams, io: StageIO) -> str:
    """`edgepipe worker RECIPE STAGE`: run trials of a study the chief started, until its budget is spent."""
    s = _Search(params, io)
    ran = s.run_trials(create=False)
    return f"{ran} trial(s) of study '{s.name}' run in this worker"


class _Search:
    """One process's share of a search: the data, the target, the study, and the trial function."""

    def __init__(self, p: SearchParams, io: StageIO):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.p, self.io = p, io
        self.target = load_target(p.target or "host")
        if (why := target_figures.supported(self.target)) is not None:
            raise EdgepipeError(f"search: {why}", "search for host or a microcontroller profile; bench on the "
                                "device afterwards")
        self.ds = load_dataset(io.inputs["data"])
        self.has_teacher = "teacher" in io.inputs
        if (TEACHER in p.space or any(k in p.space for k in ("temperature", "alpha"))) and not self.has_teacher:
            raise EdgepipeError("search: the space distils (teacher, temperature or alpha) but the stage has no "
                                "teacher input", "add inputs: {teacher: <a train stage>} or drop them from space")
        self.teacher = None
        if self.has_teacher:
            from edgepipe.training.distill import check_teacher

            self.teacher = load_model(io.inputs["teacher"])
            check_teacher(self.teacher, self.ds)
        env = target_figures.environment(self.target)
        self.env_key = fingerprint(env)
        x_val = self.ds.splits["val"][0]
        self.x_measure = self.ds.preprocess(x_val[: p.measure_samples])
        rng = np.random.default_rng(0)
        x_train = self.ds.splits["train"][0]
        self.representative = self.ds.preprocess(
            x_train[rng.choice(len(x_train), min(p.representative_samples, len(x_train)), replace=False)])
        self.reference = self._reference()
        self.budgets = self._budgets()
        self.name = p.study or io.work.name  # the runner names the work folder after the stage
        self.fingerprint = self._fingerprint(env)
        self.study = None
        self.started = time.monotonic()

    # -- the study -------------------------------------------------------------------------------------

    def _fingerprint(self, env: dict) -> str:
        p = self.p
        return fingerprint({k: v for k, v in to_dict(p).items()
                            if k not in ("trials", "storage", "study", "final_epochs", "compare_distillation")},
                           env, self.budgets)

    def _sampler(self, seed: int):
        import optuna

        p = self.p
        if p.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if p.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, p.startup_trials))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=p.startup_trials)

    def _pruner(self):
        import optuna

        p = self.p
        if p.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=1)
        if p.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=self.p.trial_train({}).epochs)
        return optuna.pruners.NopPruner()

    def run_trials(self, *, create: bool) -> int:
        self.study = study.open_study(study.storage_url(self.p.storage, self.io.work), self.name, self.fingerprint,
                                      [front.OBJECTIVES[o][0] for o in self.p.objectives], self._sampler(self.p.seed),
                                      self._pruner(), create=create)
        if not create or self.study.trials:
            # A worker joining, or a search resuming, with the chief's seed would propose the first trials again.
            self.study.sampler = self._sampler(zlib.crc32(f"{self.p.seed}:{len(self.study.trials)}:"
                                                          f"{study.this_runner()}".encode()))
        kept = len([t for t in study.counted(self.study) if t.state.name in ("COMPLETE", "PRUNED")])
        if kept:
            ui.say(f"    resuming study '{self.name}': {kept} finished trial(s) kept")
        progress.update(min(kept, self.p.trials), self.p.trials, "trial")

        def trial(t):
            with progress.inner():  # a trial's epochs show beside the trial count, not instead of it
                return self._trial(t)

        return study.run_trials(self.study, trial, self.p.trials, self._said)

    # -- reference and budgets -------------------------------------------------------------------------

    def _reference(self) -> dict | None:
        if "reference" not in self.io.inputs:
            return None
        from edgepipe.export.sidecar import sidecars

        ref_dir = Path(self.io.inputs["reference"])
        side = next((s for s in sidecars(ref_dir) if s["variant"] == "int8"), None)
        if side is None:
            raise EdgepipeError(f"search: the reference stage '{ref_dir.name}' has no int8 model",
                                "give it variants: [int8]")
        figures = target_figures.measure(ref_dir / side["file"], self.target, self.x_measure, macs=side["macs"],
                                         work=self.io.work / "reference", env_key=self.env_key)
        return {"file": side["file"], **figures, "params": side["params"], "macs": side["macs"]}

    def _budgets(self) -> dict[str, float]:
        p, out = self.p, {}
        for knob, figure in BUDGETS.items():
            value = getattr(p, knob)
            if value == "reference":
                if self.reference is None:
                    raise EdgepipeError(f"search: {knob}: reference needs a reference input",
                                        "add inputs: {reference: <a convert stage with an int8 model>}")
                value = self.reference.get(figure)
                if value is None:
                    raise EdgepipeError(f"search: {knob}: reference, but {self.target.name} gives no {figure} for "
                                        "the reference model", "use a calibrated profile (cortex-m4) or a number")
            if value is not None:
                if figure == "latency_ms" and (why := target_figures.missing_figure(self.target, figure)):
                    raise EdgepipeError(f"search: {knob} on {self.target.name}, which {why}",
                                        "bound latency on a calibrated profile (cortex-m4), or drop the budget")
                out[figure] = float(value)
        if p.min_val_accuracy is not None:
            out["val_accuracy"] = p.min_val_accuracy
        return out

    def over_budget(self, row: dict) -> tuple[list[str], float | None]:
        """Which budgets the row misses (as text), and its largest relative overshoot (<= 0: within all)."""
        missed, worst = [], None
        for figure, limit in self.budgets.items():
            value = row.get(figure)
            if value is None:
                continue
            excess = (limit - value) / limit if figure == "val_accuracy" else (value - limit) / limit
            worst = excess if worst is None else max(worst, excess)
            if excess > 0:
                missed.append(f"{figure} {front.figure_text(figure, value)} > {front.figure_text(figure, limit)}" if figure != "val_accuracy"
                              else f"val_accuracy {front.figure_text(figure, value)} < {front.figure_text(figure, limit)}")
        return missed, worst

    # -- one trial -------------------------------------------------------------------------------------

    def _trial(self, trial) -> tuple[float, ...]:
        import optuna

        from edgepipe.core._tf import keras
        from edgepipe.training.fit import seed_everything

        start = time.monotonic()
        values = sample(trial, self.p.space, self.has_teacher)
        distils = uses_teacher(values, self.p.space, self.has_teacher)
        tp = self.p.trial_train(values)
        trial.set_user_attr("values", values)
        trial.set_user_attr("distils", distils)
        where = self.io.work / "trials" / str(trial.number)
        shutil.rmtree(where, ignore_errors=True)
        (where / "out").mkdir(parents=True)
        keras.backend.clear_session()
        ds = self._trial_data(values)
        seed_everything(tp.seed)
        model = nets.build_for(tp, ds)
        row = {"params": int(model.count_params()), "macs": nets.count_macs(model)}
        if self.p.screen and any(k != "val_accuracy" for k in self.budgets):
            row.update(self._figures(model, where / "untrained.tflite", row["macs"]))
            missed, worst = self.over_budget(row)
            if missed:  # the architecture alone misses the budget: not worth training
                self._record(trial, row, start, note="over budget untrained: " + "; ".join(missed), epochs=0)
                return self._values(row)
        pruned = self._fit(model, tp, ds, trial, where, distils)
        row["epochs"] = len(_history(where / "out" / "history.csv"))
        if pruned:
            self._record(trial, row, start, note="pruned", epochs=row["epochs"])
            raise optuna.TrialPruned()
        save_model(model, where / "model.h5")
        tflite = where / "model_int8.tflite"
        row.update(self._figures(model, tflite, row["macs"]))
        row["val_accuracy"] = self._val_accuracy(tflite)
        self._record(trial, row, start, epochs=row["epochs"])
        return self._values(row)

    def _val_accuracy(self, tflite: Path | bytes) -> float:
        """Top-1 accuracy of an int8 model on the whole validation split (LiteRT on this host)."""
        from edgepipe.targets import litert

        x_val, y_val = self.ds.splits["val"]
        return float(np.mean(litert.predict(tflite, self.ds.preprocess(x_val)).argmax(1) == y_val))

    def _trial_data(self, values: dict) -> Dataset:
        if AUGMENT_SCALE not in values:
            return self.ds
        info = copy.deepcopy(self.ds.info)
        for k in SCALED_AUGMENT:
            info["augment"][k] = min(0.5, info["augment"].get(k, 0.0) * values[AUGMENT_SCALE])
        return Dataset(info, self.ds.splits)

    def _fit(self, model, tp: DistillParams, ds: Dataset, trial, where: Path, distils: bool) -> bool:
        """Train the trial's model; True if the pruner stopped it."""
        from edgepipe.core._tf import keras
        from edgepipe.training.distill import distil
        from edgepipe.training.fit import fit

        single = len(self.p.objectives) == 1

        class Prune(keras.callbacks.Callback):
            pruned = False

            def on_epoch_end(self, epoch, logs=None):
                if single and logs and "val_accuracy" in logs:
                    trial.report(float(logs["val_accuracy"]), epoch)
                    if trial.should_prune():
                        Prune.pruned = True
                        self.model.stop_training = True

        trial_io = StageIO(inputs=self.io.inputs, out=where / "out", work=where / "work")
        (where / "work").mkdir(exist_ok=True)
        if distils:
            distil(model, self.teacher, ds, tp, trial_io, callbacks=[Prune()])
        else:
            fit(model, ds, tp, trial_io, callbacks=[Prune()])
        return Prune.pruned

    def _figures(self, model, tflite: Path, macs: int) -> dict:
        from edgepipe.export.converter import convert

        tflite.write_bytes(convert(model, "int8", self.representative, "int8", tflite.stem))
        got = target_figures.measure(tflite, self.target, self.x_measure, macs=macs, work=tflite.parent / "emu",
                                     env_key=self.env_key)
        return {k: got.get(k) for k in ("latency_ms", "instructions", "flash_bytes", "ram_bytes", "provenance")}

    def _values(self, row: dict) -> tuple[float, ...]:
        """The objective values Optuna records; a figure not measured counts as the worst."""
        out = []
        for o in self.p.objectives:
            v = row.get(o)
            out.append(float(v) if v is not None else (0.0 if o == "val_accuracy" else 1e12))
        return tuple(out)

    def _record(self, trial, row: dict, start: float, *, epochs: int, note: str = "") -> None:
        row = {**row, "epochs": epochs, "seconds": round(time.monotonic() - start, 1), "note": note}
        trial.set_user_attr("row", row)
        for figure, limit in self.budgets.items():  # Optuna's constraints: feasible when every value is <= 0
            value = row.get(figure)
            if value is not None:
                trial.set_constraint(figure, (limit - value) / limit if figure == "val_accuracy"
                                     else (value - limit) / limit)

    def _said(self, t) -> None:
        """One line per finished trial: its figures, the best so far, an ETA."""
        rows = self.rows()
        done = [r for r in rows if r["state"] != "running"]
        r = next((r for r in rows if r["trial"] == t.number), None)
        if r is None:
            return
        best = front.choose([x for x in rows if x["state"] == "complete"], self.p.pick, self._keys())
        elapsed = time.monotonic() - self.started
        ran_here = max(1, len([x for x in done if x.get("runner") == study.this_runner()]))
        left = max(0, self.p.trials - len(done))
        eta = f"ETA {_minutes(elapsed / ran_here * left)}" if left else "budget spent"
        head = f"    trial {len(done)}/{self.p.trials} (#{t.number}) {r['state']}"
        figures = _figures_text(r)
        verdict = "" if r["state"] != "complete" else (" ok" if r["feasible"] else " over budget")
        best_text = f"best #{best['trial']} {100 * best['val_accuracy']:.2f} %" if best else "no feasible trial yet"
        ui.say(f"{head}: {figures}{verdict} | {best_text} | {eta}")
        progress.update(min(len(done), self.p.trials), self.p.trials, "trial", best_text)

    def _keys(self) -> list[str]:
        return ["val_accuracy", "latency_ms", "instructions", "flash_bytes", "ram_bytes"]

    # -- the outcome -------------------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """Every trial of the study as a row (surplus trials and retried orphans left out)."""
        from optuna.trial import TrialState

        states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                  TrialState.RUNNING: "running"}
        retried = {t.user_attrs.get(study.RETRY_OF_ATTR) for t in self.study.get_trials(deepcopy=False)}
        out = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state not in states or t.user_attrs.get(study.SURPLUS_ATTR) or (
                    t.state == TrialState.FAIL and t.number in retried):
                continue
            row = {"trial": t.number, "state": states[t.state], "values": t.user_attrs.get("values", t.params),
                   "runner": t.user_attrs.get(study.RUNNER_ATTR), "distils": t.user_attrs.get("distils"),
                   **t.user_attrs.get("row", {})}
            if t.state == TrialState.FAIL:
                row["note"] = t.user_attrs.get("error", "failed")
            if row["state"] == "complete" and row.get("note", "").startswith("over budget untrained"):
                row["state"] = "over budget"
            missed, worst = self.over_budget(row)
            row["over_budget"], row["violation"] = missed, worst
            row["feasible"] = row["state"] == "complete" and row.get("val_accuracy") is not None and not missed
            out.append(row)
        return out

    def finish(self) -> str:
        p, io = self.p, self.io
        rows = self.rows()
        chosen = front.choose([r for r in rows if r["state"] == "complete"], p.pick, self._keys())
        if chosen is None:
            near = front.closest(rows)
            what = (f"; the closest: trial {near['trial']} ({'; '.join(near['over_budget']) or 'not measured'})"
                    if near else "")
            raise EdgepipeError(f"search: no trial of {len(rows)} met the budget ({_budget_text(self.budgets)}){what}",
                                "relax the budget, or move the space toward smaller models (fewer channels)")
        values = chosen["values"]
        tp = p.trial_train(values)
        distils = bool(chosen.get("distils"))
        model, trained = self._final(tp, values, distils, chosen, io.out)
        comparison = None
        if p.compare_distillation and self.has_teacher:
            comparison = self._compare(tp, values, distils, model)
        searched = sorted({k for r in rows for k in r.get("values", {})})
        front.write_csv(rows, searched, io.out / "trials.csv")
        keys = [k for k in self._keys() if any(r.get(k) is not None for r in rows)]
        f = front.front([r for r in rows if r["state"] == "complete"], keys)
        fsio.write_json(io.out / "front.json", [_public(r) for r in sorted(f, key=lambda r: -r["val_accuracy"])])
        x_key = "latency_ms" if any(r.get("latency_ms") is not None for r in rows) else "instructions"
        front.plot(rows, chosen, io.out / "pareto.png", x_key=x_key, budgets=self.budgets, reference=self.reference,
                   title=f"search on {self.target.name}: {len(rows)} trials")
        counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "over budget", "failed")}
        summary = {"target": self.target.name, "study": self.name, "storage": p.storage or "work folder (SQLite)",
                   "budgets": self.budgets, "reference": self.reference, "trials": counts,
                   "chosen": {**_public(chosen), "train": to_dict(tp), "retrained_epochs": p.final_epochs},
                   "distillation": comparison, "front_size": len(f),
                   "runners": sorted({r["runner"] for r in rows if r.get("runner")})}
        fsio.write_json(io.out / "search.json", summary)
        from edgepipe.training.outputs import write_training_outputs

        metrics = write_training_outputs(model, self.ds, io, tp, extra={"search": {
            "trial": chosen["trial"], "values": values, "distils": distils, "retrained": trained}})
        acc = 100 * chosen["val_accuracy"]
        fig = _figures_text(chosen)
        return (f"trial {chosen['trial']} of {len(rows)} ({counts['pruned']} pruned, {counts['over budget']} over "
                f"budget): val int8 {acc:.2f} %, {fig}; test accuracy {100 * metrics['test']['accuracy']:.2f} %")

    def _final(self, tp: DistillParams, values: dict, distils: bool, chosen: dict, out: Path):
        """The output model: the chosen configuration retrained for final_epochs, else the trial's own."""
        from edgepipe.core._tf import keras
        from edgepipe.training.fit import seed_everything

        trial_dir = self.io.work / "trials" / str(chosen["trial"])
        if self.p.final_epochs is None and (trial_dir / "model.h5").is_file():
            shutil.copyfile(trial_dir / "out" / "history.csv", out / "history.csv")
            from edgepipe.training.modelio import load_model as load

            return load(trial_dir), False
        tp = dataclasses.replace(tp, epochs=self.p.final_epochs or tp.epochs)
        ui.say(f"    training the chosen configuration (trial {chosen['trial']}) for {tp.epochs} epochs")
        keras.backend.clear_session()
        ds = self._trial_data(values)
        seed_everything(tp.seed)
        model = nets.build_for(tp, ds)
        self._train_plain(model, tp, ds, StageIO(self.io.inputs, out=out, work=self.io.work / "final"), distils)
        return model, True

    def _train_plain(self, model, tp, ds, io: StageIO, distils: bool) -> None:
        from edgepipe.training.distill import distil
        from edgepipe.training.fit import fit

        io.work.mkdir(parents=True, exist_ok=True)
        if distils:
            distil(model, self.teacher, ds, tp, io)
        else:
            fit(model, ds, tp, io)

    def _compare(self, tp, values: dict, distils: bool, final) -> dict:
        """The chosen configuration trained the other way round (same seed, epochs and knobs); both int8
        models judged on the validation split."""
        from edgepipe.export.converter import convert
        from edgepipe.training.fit import seed_everything

        tp = dataclasses.replace(tp, epochs=self.p.final_epochs or tp.epochs)
        ui.say(f"    training the chosen configuration {'without' if distils else 'with'} the teacher, to compare")
        out = self.io.work / "compare"
        shutil.rmtree(out, ignore_errors=True)
        (out / "out").mkdir(parents=True)
        ds = self._trial_data(values)
        seed_everything(tp.seed)
        other = nets.build_for(tp, ds)
        self._train_plain(other, tp, ds, StageIO(self.io.inputs, out=out / "out", work=out / "work"), not distils)
        accs = {}
        for way, model in ((distils, final), (not distils, other)):
            blob = convert(model, "int8", self.representative, "int8", "compare")
            accs["with_teacher" if way else "without_teacher"] = self._val_accuracy(blob)
        gain = accs["with_teacher"] - accs["without_teacher"]
        return {**accs, "epochs": tp.epochs, "split": "val", "distillation_gain_points": round(100 * gain, 2),
                "paid": gain > 0}


def _history(path: Path) -> list[dict]:
    from edgepipe.training.history import read_history

    return read_history(path) if path.is_file() else []


def _figures_text(r: dict) -> str:
    """"val 98.91 %, 7.90 ms, flash 58.2 KB, RAM 9.1 KB [emu] (note)": what a trial measured."""
    labels = {"latency_ms": "", "instructions": "instructions ", "flash_bytes": "flash ", "ram_bytes": "RAM "}
    parts = [f"val {100 * r['val_accuracy']:.2f} %"] if r.get("val_accuracy") is not None else []
    parts += [labels[k] + front.figure_text(k, r[k]) for k in labels if r.get(k) is not None
              and not (k == "instructions" and r.get("latency_ms") is not None)]
    text = ", ".join(parts)
    if r.get("provenance"):
        text += f" [{_TAG.get(r['provenance'], r['provenance'])}]"
    if r.get("note") and r["state"] != "complete":
        text += f" ({r['note']})"
    return text.strip()


_TAG = {"emulated": "emu", "estimate": "est", "host-litert": "host"}


def _budget_text(budgets: dict) -> str:
    return ", ".join(f"{k} {'>=' if k == 'val_accuracy' else '<='} {front.figure_text(k, v)}" for k, v in budgets.items()) or \
        "no budget"


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("violation",)}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def builder_files(p: SearchParams) -> list[Path]:
    """The source files of the user builders the search may build (the fixed arch and every arch choice)."""
    archs = [p.train.get("arch")] + list(p.space["arch"].choices or [] if "arch" in p.space else [])
    return [f for a in dict.fromkeys(archs) if isinstance(a, str) for f in nets.builder_files(a)]


def environment(params: SearchParams) -> dict:
    """The machine facts the figures depend on: the target profile, toolchain and emulator versions."""
    target = load_target(params.target or "host")
    if target_figures.supported(target) is not None:
        return {}
    try:
        return target_figures.environment(target)
    except EdgepipeError:
        return {}  # the stage itself says what is missing, in one line


KIND = StageKind(
    name="search", params=SearchParams, run=run_search_stage, inputs={"data": False, "teacher": False,
                                                                      "reference": False},
    optional_inputs=("teacher", "reference"), output="model",
    accepts={"data": ("dataset",), "teacher": ("model",), "reference": ("tflite",)},
    main_output="model.h5", environment=environment, join=join_search, deps=lambda p: builder_files(p),
    needs=lambda p: target_figures.needs(load_target(p.target or "host")),
    exclusive=True,
    joinable=lambda p: "own" if p.storage else "chief",  # no storage: the study is a file in the chief's work folder
    doc="search architectures and training knobs for the most accurate model within the target's budget",
)
