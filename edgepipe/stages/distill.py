"""The distill stage: train a small student to match a frozen teacher (the loss: `edgepipe.training.distill`)."""

from __future__ import annotations

from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.training import nets
from edgepipe.training.distill import DistillParams, check_task, check_teacher, distil
from edgepipe.training.fit import seed_everything
from edgepipe.training.modelio import load_model
from edgepipe.training.outputs import test_figure, write_training_outputs


def run_distill_stage(params: DistillParams, io: StageIO) -> str:
    """Distil the teacher's model into a new student; outputs as for train (the student alone is saved)."""
    ds = load_dataset(io.inputs["data"])
    teacher = load_model(io.inputs["teacher"])
    check_teacher(teacher, ds)
    seed_everything(params.seed)
    student = nets.build_for(params, ds)
    distil(student, teacher, ds, params, io)
    metrics = write_training_outputs(student, ds, io, params)
    return f"student {test_figure(metrics)} ({metrics['epochs_run']} epochs)"


KIND = StageKind(
    name="distill",
    params=DistillParams,
    run=run_distill_stage,
    inputs={"data": False, "teacher": False},
    output="model",
    accepts={"data": ("dataset",), "teacher": ("model",)},
    check_task=lambda p, task: check_task(task),
    main_output="model.h5",
    deps=lambda p: nets.builder_files(p.arch),
    doc="distil a teacher model into a small student",
)
