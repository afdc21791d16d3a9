"""The cluster stage: weight clustering of a trained model, fine-tuned, then stripped to a plain Keras model.

tfmot's `cluster_weights` makes each chosen kernel share `clusters` values (centroids fine-tuned with the
rest); like pruning, it pays once the model is compressed. `preserve_sparsity` keeps a pruned model's zeros.
"""

from __future__ import annotations

import dataclasses

from edgepipe.core import fsio
from edgepipe.core.params import MAX_EPOCHS, param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.training import compress
from edgepipe.training.fit import EarlyStopping, Fit, Schedule, fit, seed_everything
from edgepipe.training.modelio import carried_forward, load_model
from edgepipe.training.outputs import test_figure, write_training_outputs


@dataclasses.dataclass
class ClusterParams(Fit):
    """Parameters of the cluster stage (the training knobs, with fine-tuning defaults)."""

    clusters: int = param(16, "distinct values per clustered kernel", min=2, max=256)
    init: compress.CentroidInit = param("kmeans_plus_plus", "how the centroids start")
    preserve_sparsity: bool = param(False, "keep the zeros of a pruned model (sparsity-preserving clustering)")
    layers: list[str] = param([], "layers to cluster (default: every Conv2D, DepthwiseConv2D and Dense)")
    skip: list[str] = param([], "layers never clustered")
    lr: float = param(1e-4, "fine-tuning learning rate", min=0.0, max=1.0)
    epochs: int = param(3, f"fine-tuning epochs (at most {MAX_EPOCHS})", min=1, max=MAX_EPOCHS)
    schedule: Schedule = param(Schedule(kind="constant"), "learning-rate schedule")
    early_stopping: EarlyStopping = param(EarlyStopping(enabled=False), "early stopping")


def run_cluster_stage(params: ClusterParams, io: StageIO) -> str:
    """Cluster and fine-tune the input model; write model.h5, the training outputs and clusters.json."""
    ds = load_dataset(io.inputs["data"])
    source = load_model(io.inputs["model"])
    seed_everything(params.seed)
    model, chosen = compress.apply_clustering(
        source,
        clusters=params.clusters,
        init=params.init,
        layers=params.layers,
        skip=params.skip,
        preserve_sparsity=params.preserve_sparsity,
    )
    fit(model, ds, params, io)
    model = compress.strip_clustering(model)
    stats = compress.weight_stats(model)
    for s in stats:
        s["clustered"] = s["layer"] in chosen
    fsio.write_json(io.out / "clusters.json", {"clusters": params.clusters, "init": params.init, "layers": stats})
    metrics = write_training_outputs(
        model, ds, io, params, extra={**carried_forward(io.inputs["model"]), "clusters": params.clusters}
    )
    most = max(s["unique"] for s in stats if s["clustered"])
    return (
        f"clustered {len(chosen)} layers ({most} distinct values at most); "
        f"{test_figure(metrics)} ({metrics['epochs_run']} epochs)"
    )


KIND = StageKind(
    name="cluster",
    params=ClusterParams,
    run=run_cluster_stage,
    inputs={"data": False, "model": False},
    output="model",
    accepts={"data": ("dataset",), "model": ("model",)},
    main_output="model.h5",
    doc="weight clustering (tfmot) of a trained model, fine-tuned",
)
