"""The parameters of a training-type stage that builds its own model: the train stage's, which a distill
stage extends and each trial of a search sets."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from edgepipe.core.params import param
from edgepipe.training.arch_args import check_arch_args
from edgepipe.training.fit import Fit


@dataclasses.dataclass
class TrainParams(Fit):
    """Parameters of the train stage: the model, regularisation, then the shared training knobs."""

    arch: str = param("cnn_teacher", "architecture from edgepipe.training.nets, or package.module:function")
    arch_args: dict[str, Any] = param({}, "extra keyword arguments for the builder (e.g. width, alpha)")
    dropout: float | None = param(
        None, "dropout before the classifier; null keeps the builder's default", min=0.0, max=0.9
    )
    l1: float = param(0.0, "L1 penalty on kernels", min=0.0)
    l2: float = param(0.0, "L2 penalty on kernels", min=0.0)
    initializer: str = param("he_normal", "kernel initializer (any tf_keras initializer name)")
    lr: float | Literal["auto"] = param(
        1e-3,
        "initial (peak, with warm-up) learning rate, or auto: a learning-rate "
        "range test on a throwaway copy of the model picks it",
        min=0.0,
        max=10.0,
    )
    folds: int = param(
        1,
        "k-fold cross-validation: k more models, each validated on one stratified fold of "
        "train+val; metrics.json gets their mean and std (1: off)",
        min=1,
        max=20,
    )
    strategy: Literal["default", "mirrored", "multi_worker"] = param(
        "default",
        "tf.distribute strategy: default (one process), mirrored (local GPUs), multi_worker "
        "(machines named by TF_CONFIG; see edgepipe.training.distribute)",
    )

    def __post_init__(self):
        check_arch_args(self.arch, self.arch_args)
        if self.strategy != "default" and (self.folds > 1 or self.lr == "auto"):
            raise ValueError(
                f"strategy {self.strategy} trains one model; it cannot be combined with folds or "
                "lr: auto; fix: use strategy: default, or drop folds and lr: auto"
            )
