"""Tasks: what a dataset's labels mean, what a model is trained to output, and how it is judged.

- `protocol`: what every task implements (`Task`);
- `classification`: one class per image, top-1 accuracy;
- `detection`: objects' centres (and boxes) from a heat map at 1/8 resolution, centroid F1 and mAP;
  - `detection_decode`: a FOMO-style heat map (and optional size head) to detections, and ground-truth boxes
    to training targets; written to be ported to C line for line (`targets/mcu/firmware/detect_decode.c`);
  - `detection_metrics`: Edge Impulse's centroid precision/recall/F1, a strict one-cell F1, count error, F1
    by object size, and with boxes mean IoU, mAP@0.5 and COCO mAP@[.5:.95];
  - `detection_coco`: COCO AP (mAP@0.5, mAP@[.5:.95]) and IoU, equal to pycocotools';
  - `detection_inputs`: the metrics' predictions and ground truth, checked and paired per image;
  - `detection_pictures`: scenes with their boxes and detections drawn.

A dataset artifact names its task; `task_of` is where the name meets its implementation. Adding a task is one
module here and one line in `TASKS`.
"""

from __future__ import annotations

from edgepipe.core.errors import EdgepipeError
from edgepipe.tasks.classification import Classification
from edgepipe.tasks.detection import Detection
from edgepipe.tasks.protocol import Task

TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Detection())}


def task_of(info: dict) -> Task:
    """The task of a dataset artifact (`dataset.json`); artifacts written before tasks existed classify."""
    name = info.get("task", "classification")
    if name not in TASKS:
        raise EdgepipeError(
            f"the dataset's task {name!r} is not one edgepipe knows ({', '.join(TASKS)})",
            "rerun its data stage with this version of edgepipe",
        )
    return TASKS[name]


def classifiers_only(info: dict, what: str) -> None:
    """Refuse, in one line, a dataset whose task `what` (a stage's work) is not built for yet."""
    name = info.get("task", "classification")
    if name != "classification":
        raise EdgepipeError(
            f"{what} is built for classifiers; this data's task is {name}",
            f"train the {name} model with a train stage ({what} of it is not built yet)",
        )


__all__ = ["TASKS", "Task", "classifiers_only", "task_of"]
