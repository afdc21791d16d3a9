"""One process's share of a search: the data, the target, the study, and the trial function.

Each trial sets the searched values (`edgepipe.search.space`) into the train parameters, builds the model
and, when there are budgets, first measures the untrained architecture on the target (a trial over budget
is not trained: latency, flash and RAM depend on the architecture, not on the weights). It then trains on
the train split (distilling from the teacher when the trial says so), pruned early by its validation
accuracy per epoch, converts to int8 and is judged on the whole validation split (never test) and on its
figures on the target, measured from that int8 file (`edgepipe.search.figures`). Budgets are Optuna
constraints; `reference` budgets are the reference model's figures, measured the same way.
"""

from __future__ import annotations

import copy
import shutil
import time
import zlib
from pathlib import Path

import numpy as np

from edgepipe.core import progress, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import to_dict
from edgepipe.core.stage import StageIO
from edgepipe.datasets.artifact import Dataset, load_dataset
from edgepipe.search import figures as target_figures
from edgepipe.search import front, study
from edgepipe.search.params import BUDGETS, SearchParams
from edgepipe.search.space import AUGMENT_SCALE, SCALED_AUGMENT, TEACHER, fingerprint, sample, uses_teacher
from edgepipe.targets.backends import check_task
from edgepipe.targets.profiles import load_target
from edgepipe.tasks import task_of
from edgepipe.training import nets
from edgepipe.training.distill import DistillParams
from edgepipe.training.modelio import load_model, save_model


class Search:
    """One process's share of a search: the data, the target, the study, and the trial function."""

    def __init__(self, p: SearchParams, io: StageIO):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.p, self.io = p, io
        self.target = load_target(p.target or "host")
        if (why := target_figures.supported(self.target)) is not None:
            raise EdgepipeError(
                f"search: {why}", "search for host or a microcontroller profile; bench on the device afterwards"
            )
        self.ds = load_dataset(io.inputs["data"])
        check_task(self.target, task_of(self.ds.info).name, "search")
        self.has_teacher = "teacher" in io.inputs
        if (TEACHER in p.space or any(k in p.space for k in ("temperature", "alpha"))) and not self.has_teacher:
            raise EdgepipeError(
                "search: the space distils (teacher, temperature or alpha) but the stage has no teacher input",
                "add inputs: {teacher: <a train stage>} or drop them from space",
            )
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
            x_train[rng.choice(len(x_train), min(p.representative_samples, len(x_train)), replace=False)]
        )
        self.reference = self._reference()
        self.budgets = self._budgets()
        self.name = p.study or io.work.name  # the runner names the work folder after the stage
        self.fingerprint = self._fingerprint(env)
        self.study = None
        self.started = time.monotonic()

    # -- the study -------------------------------------------------------------------------------------

    def _fingerprint(self, env: dict) -> str:
        p = self.p
        return fingerprint(
            {
                k: v
                for k, v in to_dict(p).items()
                if k not in ("trials", "storage", "study", "final_epochs", "compare_distillation")
            },
            env,
            self.budgets,
        )

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
        self.study = study.open_study(
            study.storage_url(self.p.storage, self.io.work),
            self.name,
            self.fingerprint,
            [front.OBJECTIVES[o][0] for o in self.p.objectives],
            self._sampler(self.p.seed),
            self._pruner(),
            create=create,
        )
        if not create or self.study.trials:
            # A worker joining, or a search resuming, with the chief's seed would propose the first trials again.
            self.study.sampler = self._sampler(
                zlib.crc32(f"{self.p.seed}:{len(self.study.trials)}:{study.this_runner()}".encode())
            )
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
            raise EdgepipeError(
                f"search: the reference stage '{ref_dir.name}' has no int8 model", "give it variants: [int8]"
            )
        figures = target_figures.measure(
            ref_dir / side["file"],
            self.target,
            self.x_measure,
            macs=side["macs"],
            work=self.io.work / "reference",
            env_key=self.env_key,
        )
        return {"file": side["file"], **figures, "params": side["params"], "macs": side["macs"]}

    def _budgets(self) -> dict[str, float]:
        p, out = self.p, {}
        for knob, figure in BUDGETS.items():
            value = getattr(p, knob)
            if value == "reference":
                if self.reference is None:
                    raise EdgepipeError(
                        f"search: {knob}: reference needs a reference input",
                        "add inputs: {reference: <a convert stage with an int8 model>}",
                    )
                value = self.reference.get(figure)
                if value is None or not value > 0:  # a limit of 0 (or NaN) is no budget: nothing is relative to it
                    got = "no" if value is None else f"a {figure} of {value} for"
                    raise EdgepipeError(
                        f"search: {knob}: reference, but {self.target.name} gives {got} the reference model",
                        "use a calibrated profile (cortex-m4) or a number",
                    )
            if value is not None:
                if figure == "latency_ms" and (why := target_figures.missing_figure(self.target, figure)):
                    raise EdgepipeError(
                        f"search: {knob} on {self.target.name}, which {why}",
                        "bound latency on a calibrated profile (cortex-m4), or drop the budget",
                    )
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
            excess = _excess(figure, value, limit)
            worst = excess if worst is None else max(worst, excess)
            if excess > 0:
                missed.append(
                    f"{figure} {front.figure_text(figure, value)} > {front.figure_text(figure, limit)}"
                    if figure != "val_accuracy"
                    else f"val_accuracy {front.figure_text(figure, value)} < {front.figure_text(figure, limit)}"
                )
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
        ds = self.trial_data(values)
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
        row["val_accuracy"] = self.val_accuracy(tflite)
        self._record(trial, row, start, epochs=row["epochs"])
        return self._values(row)

    def val_accuracy(self, tflite: Path | bytes) -> float:
        """The task's headline metric (a classifier's top-1 accuracy) of an int8 model on the whole validation
        split (LiteRT on this host)."""
        from edgepipe.targets import litert

        x_val, y_val = self.ds.splits["val"]
        task = task_of(self.ds.info)
        return float(
            task.metrics(y_val, litert.predict(tflite, self.ds.preprocess(x_val)), self.ds.info)[task.headline]
        )

    def trial_data(self, values: dict) -> Dataset:
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
        got = target_figures.measure(
            tflite, self.target, self.x_measure, macs=macs, work=tflite.parent / "emu", env_key=self.env_key
        )
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
                trial.set_constraint(figure, _excess(figure, value, limit))

    def _said(self, t) -> None:
        """One line per finished trial: its figures, the best so far, an ETA."""
        rows = self.rows()
        done = [r for r in rows if r["state"] != "running"]
        r = next((r for r in rows if r["trial"] == t.number), None)
        if r is None:
            return
        best = front.choose([x for x in rows if x["state"] == "complete"], self.p.pick, self.keys())
        elapsed = time.monotonic() - self.started
        ran_here = max(1, len([x for x in done if x.get("runner") == study.this_runner()]))
        left = max(0, self.p.trials - len(done))
        eta = f"ETA {_minutes(elapsed / ran_here * left)}" if left else "budget spent"
        head = f"    trial {len(done)}/{self.p.trials} (#{t.number}) {r['state']}"
        figures = front.row_text(r)
        verdict = "" if r["state"] != "complete" else (" ok" if r["feasible"] else " over budget")
        best_text = f"best #{best['trial']} {100 * best['val_accuracy']:.2f} %" if best else "no feasible trial yet"
        ui.say(f"{head}: {figures}{verdict} | {best_text} | {eta}")
        progress.update(min(len(done), self.p.trials), self.p.trials, "trial", best_text)

    def keys(self) -> list[str]:
        return ["val_accuracy", "latency_ms", "instructions", "flash_bytes", "ram_bytes"]

    # -- the outcome -------------------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """Every trial of the study as a row (surplus trials and abandoned or retried ones left out)."""
        from optuna.trial import TrialState

        states = {
            TrialState.COMPLETE: "complete",
            TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed",
            TrialState.RUNNING: "running",
        }
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(study.RETRY_OF_ATTR) for t in trials} | {
            t.system_attrs.get("failed_trial") for t in trials
        }
        out = []
        for t in self.study.get_trials(deepcopy=False):
            if (
                t.state not in states
                or t.user_attrs.get(study.SURPLUS_ATTR)
                or (t.state == TrialState.FAIL and (t.number in retried or t.user_attrs.get(study.ABANDONED_ATTR)))
            ):
                continue
            row = {
                "trial": t.number,
                "state": states[t.state],
                "values": t.user_attrs.get("values", t.params),
                "runner": t.user_attrs.get(study.RUNNER_ATTR),
                "distils": t.user_attrs.get("distils"),
                **t.user_attrs.get("row", {}),
            }
            if t.state == TrialState.FAIL:
                row["note"] = t.user_attrs.get("error", "failed")
            if row["state"] == "complete" and row.get("note", "").startswith("over budget untrained"):
                row["state"] = "over budget"
            missed, worst = self.over_budget(row)
            row["over_budget"], row["violation"] = missed, worst
            row["feasible"] = row["state"] == "complete" and row.get("val_accuracy") is not None and not missed
            out.append(row)
        return out


def _excess(figure: str, value: float, limit: float) -> float:
    """How far `value` misses `limit`, relative to it (<= 0: within). Budgets are > 0 (checked at load and for
    a reference); a limit of 0 would still give a number, the absolute overshoot, never a division by zero."""
    over = limit - value if figure == "val_accuracy" else value - limit
    return over / limit if limit > 0 else over


def _history(path: Path) -> list[dict]:
    from edgepipe.training.history import read_history

    return read_history(path) if path.is_file() else []


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
