"""The prune stage: magnitude pruning of a trained model, fine-tuned, then stripped to a plain Keras model.

tfmot's `prune_low_magnitude` zeroes the smallest weights of each chosen kernel, ramping the sparsity from 0
to the target over the first part of the fine-tuning (a polynomial decay), or keeps a fixed m-of-n pattern
(`m_by_n: [2, 4]`, what sparse tensor cores and some NPUs take). Zeros shrink a model only once it is
compressed (gzip, OTA, compressed flash): the report's `compressed` column shows it.
"""

from __future__ import annotations

import dataclasses
import math

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import MAX_EPOCHS, param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.training import compress
from edgepipe.training.fit import EarlyStopping, Fit, Schedule, fit, seed_everything, steps_per_epoch
from edgepipe.training.modelio import carried_forward, load_model
from edgepipe.training.outputs import test_figure, write_training_outputs


@dataclasses.dataclass
class PruneParams(Fit):
    """Parameters of the prune stage (the training knobs, with fine-tuning defaults)."""

    sparsity: float = param(
        0.5, "fraction of each pruned kernel's weights set to zero at the end, in [0, 1)", min=0.0, max=0.999
    )
    m_by_n: list[int] | None = param(
        None,
        "structured sparsity instead: [m, n] zeroes m of every n consecutive "
        "weights (Conv2D and Dense only; sparsity is then ignored)",
    )
    ramp: float = param(
        0.6,
        "fraction of the fine-tuning over which sparsity ramps up; the rest trains at the target",
        min=0.05,
        max=1.0,
    )
    frequency: int = param(50, "steps between mask updates during the ramp", min=1)
    layers: list[str] = param([], "layers to prune (default: every layer tfmot can prune)")
    skip: list[str] = param([], "layers never pruned (the first conv and the classifier are usual picks)")
    lr: float = param(3e-4, "fine-tuning learning rate", min=0.0, max=1.0)
    epochs: int = param(4, f"fine-tuning epochs (at most {MAX_EPOCHS})", min=1, max=MAX_EPOCHS)
    schedule: Schedule = param(Schedule(kind="constant"), "learning-rate schedule")
    early_stopping: EarlyStopping = param(
        EarlyStopping(enabled=False), "early stopping (off: it would stop before the ramp ends)"
    )

    def __post_init__(self):
        if self.m_by_n is not None:
            if len(self.m_by_n) != 2 or not 0 < self.m_by_n[0] < self.m_by_n[1]:
                raise ValueError(f"m_by_n {self.m_by_n} is not [m, n] with 0 < m < n; fix: e.g. m_by_n: [2, 4]")


def run_prune_stage(params: PruneParams, io: StageIO) -> str:
    """Prune and fine-tune the input model; write model.h5, the training outputs and sparsity.json."""
    ds = load_dataset(io.inputs["data"])
    source = load_model(io.inputs["model"])
    seed_everything(params.seed)
    steps = params.epochs * steps_per_epoch(ds, params.batch_size)
    # tfmot updates the masks only every `frequency` steps inside [begin, end]: the ramp ends on an update,
    # or the last one falls short of the target (and a short fine-tuning would never update at all).
    ramp = max(1, math.ceil(params.ramp * steps) - 1)
    frequency = min(params.frequency, max(1, ramp // 4))
    end_step = frequency * math.ceil(ramp / frequency)
    if end_step >= steps:
        end_step -= frequency
    model, chosen = compress.apply_pruning(
        source,
        sparsity=params.sparsity,
        m_by_n=tuple(params.m_by_n) if params.m_by_n else None,
        layers=params.layers,
        skip=params.skip,
        begin_step=0,
        end_step=max(end_step, 1),
        frequency=frequency,
    )
    fit(model, ds, params, io, callbacks=compress.pruning_callbacks())
    model = compress.strip_pruning(model)
    stats = compress.weight_stats(model)
    for s in stats:
        s["pruned"] = s["layer"] in chosen
    pruned = [s for s in stats if s["pruned"]]
    achieved = sum(s["zeros"] for s in pruned) / max(1, sum(s["weights"] for s in pruned))
    if not params.m_by_n and achieved < params.sparsity - 0.05:
        raise EdgepipeError(
            f"prune: the pruned layers reached {100 * achieved:.1f} % zeros, not the "
            f"{100 * params.sparsity:.0f} % asked for ({steps} fine-tuning steps)",
            "give more epochs, or a smaller frequency",
        )
    # Over every weight kernel, skipped layers included: the figure a "pruned to N %" claim should quote.
    overall = sum(s["zeros"] for s in stats) / max(1, sum(s["weights"] for s in stats))
    fsio.write_json(
        io.out / "sparsity.json",
        {
            "target": params.sparsity,
            "m_by_n": params.m_by_n,
            "achieved": round(achieved, 4),
            "overall": round(overall, 4),
            "layers": stats,
        },
    )
    metrics = write_training_outputs(
        model, ds, io, params, extra={**carried_forward(io.inputs["model"]), "sparsity": round(achieved, 4)}
    )
    what = f"{params.m_by_n[0]}:{params.m_by_n[1]}" if params.m_by_n else f"{100 * achieved:.1f} % zeros"
    if len(pruned) < len(stats):
        what += f" ({100 * overall:.1f} % of all {len(stats)} layers' weights)"
    return f"pruned {len(pruned)} layers to {what}; {test_figure(metrics)} ({metrics['epochs_run']} epochs)"


KIND = StageKind(
    name="prune",
    params=PruneParams,
    run=run_prune_stage,
    inputs={"data": False, "model": False},
    output="model",
    accepts={"data": ("dataset",), "model": ("model",)},
    main_output="model.h5",
    doc="magnitude pruning (tfmot) of a trained model to a target sparsity or m-by-n, fine-tuned",
)
