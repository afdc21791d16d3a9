"""A search's outcome: the chosen trial, its model (retrained for `final_epochs` if asked), the comparison
with and without distillation, and the search's files (trials.csv, front.json, pareto.png, search.json).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from edgepipe.core import fsio, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import to_dict
from edgepipe.core.stage import StageIO
from edgepipe.search import front
from edgepipe.search.trials import Search
from edgepipe.tasks import task_of
from edgepipe.training import nets
from edgepipe.training.distill import DistillParams


def finish(s: Search) -> str:
    """Choose among the study's trials, write the chosen model as the stage's output and the search's tables."""
    p, io = s.p, s.io
    rows = s.rows()
    chosen = front.choose([r for r in rows if r["state"] == "complete"], p.pick, s.keys())
    if chosen is None:
        near = front.closest(rows)
        what = (
            f"; the closest: trial {near['trial']} ({'; '.join(near['over_budget']) or 'not measured'})" if near else ""
        )
        failed = [r for r in rows if r["state"] == "failed"]
        if failed and len(failed) == len(rows):  # nothing was measured: say why, not which budget
            raise EdgepipeError(
                f"search: every trial of {len(rows)} failed; trial {failed[0]['trial']}: {failed[0].get('note')}",
                "read the trials' errors in the stage's output, and correct the train parameters or space that cause them",
            )
        raise EdgepipeError(
            f"search: no trial of {len(rows)} met the budget ({front.budget_text(s.budgets)}){what}",
            "relax the budget, or move the space toward smaller models (fewer channels)",
        )
    values = chosen["values"]
    tp = p.trial_train(values)
    distils = bool(chosen.get("distils"))
    model, trained = _final(s, tp, values, distils, chosen, io.out)
    comparison = None
    if p.compare_distillation and s.has_teacher:
        comparison = _compare(s, tp, values, distils, model)
    searched = sorted({k for r in rows for k in r.get("values", {})})
    front.write_csv(rows, searched, io.out / "trials.csv")
    keys = [k for k in s.keys() if any(r.get(k) is not None for r in rows)]
    f = front.front([r for r in rows if r["state"] == "complete"], keys)
    fsio.write_json(io.out / "front.json", [_public(r) for r in sorted(f, key=lambda r: -r["val_accuracy"])])
    x_key = "latency_ms" if any(r.get("latency_ms") is not None for r in rows) else "instructions"
    front.plot(
        rows,
        chosen,
        io.out / "pareto.png",
        x_key=x_key,
        budgets=s.budgets,
        reference=s.reference,
        title=f"search on {s.target.name}: {len(rows)} trials",
    )
    counts = {
        state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "over budget", "failed")
    }
    summary = {
        "target": s.target.name,
        "study": s.name,
        "storage": p.storage or "work folder (SQLite)",
        "budgets": s.budgets,
        "reference": s.reference,
        "trials": counts,
        "chosen": {**_public(chosen), "train": to_dict(tp), "retrained_epochs": p.final_epochs},
        "distillation": comparison,
        "front_size": len(f),
        "runners": sorted({r["runner"] for r in rows if r.get("runner")}),
    }
    fsio.write_json(io.out / "search.json", summary)
    from edgepipe.training.outputs import write_training_outputs

    metrics = write_training_outputs(
        model,
        s.ds,
        io,
        tp,
        extra={"search": {"trial": chosen["trial"], "values": values, "distils": distils, "retrained": trained}},
    )
    acc = 100 * chosen["val_accuracy"]
    task = task_of(s.ds.info)
    fig = front.row_text(chosen)
    return (
        f"trial {chosen['trial']} of {len(rows)} ({counts['pruned']} pruned, {counts['over budget']} over "
        f"budget): val int8 {acc:.2f} %, {fig}; test {task.headline_label} {100 * metrics['test'][task.headline]:.2f} %"
    )


def _final(s: Search, tp: DistillParams, values: dict, distils: bool, chosen: dict, out: Path):
    """The output model: the chosen configuration retrained for final_epochs, else the trial's own."""
    from edgepipe.core._tf import keras
    from edgepipe.training.fit import seed_everything

    trial_dir = s.io.work / "trials" / str(chosen["trial"])
    if s.p.final_epochs is None and (trial_dir / "model.h5").is_file():
        shutil.copyfile(trial_dir / "out" / "history.csv", out / "history.csv")
        from edgepipe.training.modelio import load_model as load

        return load(trial_dir), False
    tp = dataclasses.replace(tp, epochs=s.p.final_epochs or tp.epochs)
    ui.say(f"    training the chosen configuration (trial {chosen['trial']}) for {tp.epochs} epochs")
    keras.backend.clear_session()
    ds = s.trial_data(values)
    seed_everything(tp.seed)
    model = nets.build_for(tp, ds)
    _train_plain(s, model, tp, ds, StageIO(s.io.inputs, out=out, work=s.io.work / "final"), distils)
    return model, True


def _train_plain(s: Search, model, tp, ds, io: StageIO, distils: bool) -> None:
    from edgepipe.training.distill import distil
    from edgepipe.training.fit import fit

    io.work.mkdir(parents=True, exist_ok=True)
    if distils:
        distil(model, s.teacher, ds, tp, io)
    else:
        fit(model, ds, tp, io)


def _compare(s: Search, tp, values: dict, distils: bool, final) -> dict:
    """The chosen configuration trained the other way round (same seed, epochs and knobs); both int8
    models judged on the validation split."""
    from edgepipe.export.converter import convert
    from edgepipe.training.fit import seed_everything

    tp = dataclasses.replace(tp, epochs=s.p.final_epochs or tp.epochs)
    ui.say(f"    training the chosen configuration {'without' if distils else 'with'} the teacher, to compare")
    out = s.io.work / "compare"
    shutil.rmtree(out, ignore_errors=True)
    (out / "out").mkdir(parents=True)
    ds = s.trial_data(values)
    seed_everything(tp.seed)
    other = nets.build_for(tp, ds)
    _train_plain(s, other, tp, ds, StageIO(s.io.inputs, out=out / "out", work=out / "work"), not distils)
    accs = {}
    for way, model in ((distils, final), (not distils, other)):
        blob = convert(model, "int8", s.representative, "int8", "compare")
        accs["with_teacher" if way else "without_teacher"] = s.val_accuracy(blob)
    gain = accs["with_teacher"] - accs["without_teacher"]
    return {
        **accs,
        "epochs": tp.epochs,
        "split": "val",
        "distillation_gain_points": round(100 * gain, 2),
        "paid": gain > 0,
    }


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("violation",)}
