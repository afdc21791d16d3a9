"""Knowledge distillation (Hinton et al., 2015): train a small student to match a frozen teacher.

loss = alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes
(the soft gradients shrink as 1/T^2), so alpha means the same thing at any temperature. The distill
stage and a search's distilling trials both train through `distil`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.core.stage import StageIO
from edgepipe.datasets.artifact import Dataset
from edgepipe.tasks import TASKS, task_of
from edgepipe.training.fit import fit, make_optimizer, steps_per_epoch
from edgepipe.training.params import TrainParams


@dataclasses.dataclass
class DistillParams(TrainParams):
    """Parameters of the distill stage: the student (as for train), then the distillation loss."""

    arch: str = param("ds_student", "student architecture from edgepipe.training.nets, or package.module:function")
    lr: float = param(1e-3, "initial (peak, with warm-up) learning rate", min=0.0, max=10.0)
    folds: int = param(1, "not available for distillation: keep 1", min=1)

    temperature: float = param(4.0, "softmax temperature T of the soft targets", min=1.0, max=50.0)
    alpha: float = param(0.1, "weight of the hard-label cross-entropy; 1 - alpha goes to the teacher", min=0.0, max=1.0)
    teacher_outputs: Literal["online", "cached"] = param(
        "online",
        "online: the teacher runs on every augmented batch the student sees; cached: its logits on "
        "the un-augmented train images are computed once (identical without augmentation, and faster)",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.folds != 1:
            raise ValueError(
                "folds (k-fold cross-validation) is available in train stages, not distill; fix: drop folds"
            )
        if self.class_weights != "none" and self.teacher_outputs == "cached":
            raise ValueError(
                "class_weights do not combine with teacher_outputs: cached; "
                "fix: use teacher_outputs: online, or drop class_weights"
            )


def logits_of(model):
    """A model's pre-softmax output as a model: the zoo (and user builders) end in a Softmax layer."""
    from edgepipe.core._tf import keras

    last = model.layers[-1]
    is_softmax = isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and getattr(last.activation, "__name__", "") == "softmax"
    )
    if not is_softmax:
        raise EdgepipeError(
            f"model '{model.name}' does not end in a Softmax layer, so its logits cannot be found",
            "end the builder with keras.layers.Softmax() after the last Dense",
        )
    return keras.Model(model.input, last.input, name=f"{model.name}_logits")


def make_distiller(student, teacher, alpha: float, temperature: float, label_smoothing: float = 0.0):
    """A keras Model whose fit() trains `student` (a softmax model) against frozen `teacher`.

    The class is defined inside the function because its base class, keras.Model, is imported lazily.
    """
    from edgepipe.core._tf import keras, tf

    class Distiller(keras.Model):
        def __init__(self):
            super().__init__()
            self.student = student
            self.student_logits = logits_of(student)
            self.teacher_logits = logits_of(teacher)
            self.teacher_logits.trainable = False
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.acc = keras.metrics.CategoricalAccuracy(name="accuracy")
            self.ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)

        @property
        def metrics(self):
            return [self.loss_tracker, self.acc]

        def call(self, x, training=False):
            return self.student(x, training=training)

        def train_step(self, data):
            x, y = data[0], data[1]
            sample_weight = data[2] if len(data) > 2 else None
            if isinstance(y, (tuple, list)):  # teacher_outputs: cached, y = (one-hot labels, teacher logits)
                y, teacher = y
            else:
                teacher = self.teacher_logits(x, training=False)
            with tf.GradientTape() as tape:
                logits = self.student_logits(x, training=True)
                hard = self.ce(y, logits, sample_weight=sample_weight)
                soft = keras.losses.kl_divergence(
                    tf.nn.softmax(teacher / temperature), tf.nn.softmax(logits / temperature)
                )
                loss = alpha * hard + (1 - alpha) * temperature**2 * tf.reduce_mean(soft)
                loss += tf.add_n(self.student.losses) if self.student.losses else 0.0
            variables = self.student.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            self.loss_tracker.update_state(loss)
            self.acc.update_state(y, logits)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            x, y = data[0], data[1]
            logits = self.student_logits(x, training=False)
            self.loss_tracker.update_state(self.ce(y, logits))
            self.acc.update_state(y, logits)
            return {m.name: m.result() for m in self.metrics}

    return Distiller()


def check_task(task: str) -> None:
    """Refuse a task without a distillation loss (`Task.soft_loss`), in one line."""
    if not TASKS[task].distils:
        raise EdgepipeError(
            f"distillation has no loss for this data's task ({task})", f"train the {task} model with a train stage"
        )


def check_teacher(teacher, ds: Dataset) -> None:
    """The teacher must map the data's input shape to what the task's models output (a classifier's classes,
    a detector's grid with or without sizes)."""
    task = task_of(ds.info)
    check_task(task.name)
    if task.name != "classification":
        fits = task.check_output(tuple(teacher.output_shape[1:]), ds.info) is None
        if not fits or tuple(teacher.input_shape[1:]) != ds.input_shape:
            raise EdgepipeError(
                f"teacher maps {teacher.input_shape} to {teacher.output_shape}, not what a {task.name} model of this "
                f"data outputs ({ds.input_shape} to {task.output_shape(ds.info)})",
                "distil on the teacher's dataset",
            )
        return
    if tuple(teacher.input_shape[1:]) != ds.input_shape or teacher.output_shape[-1] != len(ds.classes):
        raise EdgepipeError(
            f"teacher maps {teacher.input_shape} to {teacher.output_shape}, the data is "
            f"{ds.input_shape} with {len(ds.classes)} classes",
            "distil on the teacher's dataset",
        )


def make_task_distiller(student, teacher, hard, soft, alpha: float):
    """A keras Model whose fit() trains `student` on `alpha` x its task's loss `hard(targets, outputs)` plus
    (1 - alpha) x the task's `soft(teacher outputs, outputs)` against frozen `teacher` (`Task.soft_loss`)."""
    from edgepipe.core._tf import keras, tf

    class TaskDistiller(keras.Model):
        def __init__(self):
            super().__init__()
            self.student = student
            self.teacher = teacher
            self.teacher.trainable = False
            self.loss_tracker = keras.metrics.Mean(name="loss")

        @property
        def metrics(self):
            return [self.loss_tracker]

        def call(self, x, training=False):
            return self.student(x, training=training)

        def train_step(self, data):
            x, y = data[0], data[1]
            if isinstance(y, (tuple, list)):  # teacher_outputs: cached, y = (targets, teacher outputs)
                y, taught = y
            else:
                taught = self.teacher(x, training=False)
            with tf.GradientTape() as tape:
                out = self.student(x, training=True)
                loss = alpha * hard(y, out) + (1 - alpha) * soft(taught, out)
                loss += tf.add_n(self.student.losses) if self.student.losses else 0.0
            variables = self.student.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            self.loss_tracker.update_state(loss)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):  # validation judges the student on the labels alone, as a trained model is
            self.loss_tracker.update_state(hard(data[1], self.student(data[0], training=False)))
            return {m.name: m.result() for m in self.metrics}

    return TaskDistiller()


def distil(student, teacher, ds: Dataset, params: DistillParams, io: StageIO, callbacks=()) -> list[dict]:
    """Fit `student` to `teacher` and the labels as `params` say; returns the history rows."""
    task = task_of(ds.info)
    if task.name != "classification":
        return _distil_task(student, teacher, ds, params, io, callbacks)
    distiller = make_distiller(student, teacher, params.alpha, params.temperature, params.label_smoothing)
    distiller.compile(
        optimizer=make_optimizer(params, steps_per_epoch(ds, params.batch_size)),
        steps_per_execution=params.steps_per_execution,
    )
    cached = None
    if params.teacher_outputs == "cached":
        cached = logits_of(teacher).predict(ds.preprocess(ds.splits["train"][0]), batch_size=512, verbose=0)
    return fit(distiller, ds, params, io, compile_model=False, target=student, train_extra=cached, callbacks=callbacks)


def _distil_task(student, teacher, ds: Dataset, params: DistillParams, io: StageIO, callbacks) -> list[dict]:
    """`distil` for a task whose models end in probabilities (a detector's heat map): the task's own soft loss."""
    task = task_of(ds.info)
    distiller = make_task_distiller(
        student, teacher, task.loss(ds.info, params), task.soft_loss(ds.info, params, params.temperature), params.alpha
    )
    distiller.compile(
        optimizer=make_optimizer(params, steps_per_epoch(ds, params.batch_size)),
        steps_per_execution=params.steps_per_execution,
    )
    cached = None
    if params.teacher_outputs == "cached":
        cached = teacher.predict(ds.preprocess(ds.splits["train"][0]), batch_size=512, verbose=0)
    return fit(distiller, ds, params, io, compile_model=False, target=student, train_extra=cached, callbacks=callbacks)
