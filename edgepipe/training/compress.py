"""Pruning and weight clustering with tensorflow-model-optimization, and what they leave in the weights.

The prune and cluster stages wrap the chosen layers of a trained model (tfmot's `prune_low_magnitude`
and `cluster_weights`), fine-tune it with the shared training loop and strip the wrappers again, so the
next stage gets a plain Keras model whose kernels are sparse or take few distinct values. The qat stage's
`preserve` keeps them so through quantization (tfmot's collaborative-optimization schemes). The figures
(`weight_stats` here, `edgepipe.export.weights` for a `.tflite`) are read from the weights themselves.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.weights import weight_stats_of

Preserve = Literal["none", "sparsity", "clusters", "both"]
CentroidInit = Literal["kmeans_plus_plus", "linear", "density_based", "random"]


def _tfmot():
    from edgepipe.core._tf import tf  # noqa: F401, I001 - first: TensorFlow's import noise silenced

    import tensorflow_model_optimization as tfmot

    return tfmot


def prunable_weights(layer) -> list[str]:
    """The weight attributes tfmot prunes in `layer` (`kernel`, `depthwise_kernel`); [] when it prunes none."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    _tfmot()
    if layer.__class__ not in PruneRegistry._LAYERS_WEIGHTS_MAP:
        return []
    return list(PruneRegistry._weight_names(layer))


def _chosen(model, layers: Sequence[str], skip: Sequence[str], what: str, can) -> list[str]:
    """The layers to wrap: `layers` (each checked) or every layer `can` takes, minus `skip`."""
    names = [layer.name for layer in model.layers]
    for name in [*layers, *skip]:
        if name not in names:
            raise EdgepipeError(
                f"{what}: model '{model.name}' has no layer '{name}'",
                f"use one of: {', '.join(n for n in names if can(model.get_layer(n)))}",
            )
    if layers:
        for name in layers:
            if not can(model.get_layer(name)):
                kind = type(model.get_layer(name)).__name__
                raise EdgepipeError(
                    f"{what}: tfmot cannot {what} layer '{name}' ({kind}: no weights it handles)",
                    "name Conv2D, DepthwiseConv2D or Dense layers, or leave layers empty for all",
                )
        chosen = list(layers)
    else:
        chosen = [layer.name for layer in model.layers if can(layer)]
    chosen = [n for n in chosen if n not in skip]
    if not chosen:
        raise EdgepipeError(f"{what}: no layer of model '{model.name}' is left to {what}", "skip fewer layers")
    return chosen


def apply_pruning(
    model,
    *,
    sparsity: float,
    m_by_n: tuple[int, int] | None,
    layers: Sequence[str],
    skip: Sequence[str],
    begin_step: int,
    end_step: int,
    frequency: int,
):
    """A copy of `model` with the chosen layers wrapped for magnitude pruning: a polynomial ramp from 0 to
    `sparsity` between the steps, or a fixed m-of-n pattern (`m_by_n`, e.g. 2 of every 4 zero)."""
    tfmot = _tfmot()
    sk = tfmot.sparsity.keras

    def can(layer):
        if m_by_n and type(layer).__name__ == "DepthwiseConv2D":
            return False  # tfmot's m-by-n masks are for Conv2D and Dense kernels only
        return bool(prunable_weights(layer))

    chosen = _chosen(model, layers, skip, "prune", can)
    schedule = sk.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=begin_step,
        end_step=max(end_step, begin_step + 1),
        frequency=frequency,
    )
    if m_by_n:
        schedule = sk.ConstantSparsity(0.5, begin_step=begin_step, frequency=frequency)  # unused by m-by-n masks

    def wrap(layer):
        return sk.prune_low_magnitude(layer, pruning_schedule=schedule, sparsity_m_by_n=m_by_n)

    from edgepipe.core._tf import keras

    def clone(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        return wrap(fresh) if layer.name in chosen else fresh

    pruned = keras.models.clone_model(model, clone_function=clone)
    _copy_weights(model, pruned)  # the wrappers add mask variables, so weights go layer by layer
    return pruned, chosen


def _copy_weights(source, wrapped) -> None:
    """Copy each layer's weights into its (possibly wrapped) copy; clone_model keeps the layers' order."""
    for layer, target in zip(source.layers, wrapped.layers, strict=True):
        inner = getattr(target, "layer", target)
        if layer.weights:
            inner.set_weights(layer.get_weights())


def strip_pruning(model):
    return _fresh(_tfmot().sparsity.keras.strip_pruning(model))


def _fresh(model):
    """A copy with its own graph: tfmot's strip reuses the wrapped layers, whose first node (`layer.output`)
    stays in the wrapped model's graph, which breaks any probe built from the stripped one."""
    from edgepipe.core._tf import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def pruning_callbacks() -> list:
    return [_tfmot().sparsity.keras.UpdatePruningStep()]


def apply_clustering(
    model, *, clusters: int, init: CentroidInit, layers: Sequence[str], skip: Sequence[str], preserve_sparsity: bool
):
    """A copy of `model` whose chosen layers' kernels are clustered to `clusters` shared values."""
    tfmot = _tfmot()
    ck = tfmot.clustering.keras
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import ClusteringRegistry

    def can(layer):
        return bool(layer.trainable_weights) and ClusteringRegistry.supports(layer) and bool(prunable_weights(layer))

    chosen = _chosen(model, layers, skip, "cluster", can)
    centroid = ck.CentroidInitialization[init.upper()]

    from edgepipe.core._tf import keras

    def clone(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        if layer.name not in chosen:
            return fresh
        fresh.build(layer.input_shape)
        fresh.set_weights(layer.get_weights())  # centroids are initialised from the trained weights
        return ck.cluster_weights(
            fresh, number_of_clusters=clusters, cluster_centroids_init=centroid, preserve_sparsity=preserve_sparsity
        )

    clustered = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name not in chosen and layer.weights:
            clustered.get_layer(layer.name).set_weights(layer.get_weights())
    return clustered, chosen


def strip_clustering(model):
    return _fresh(_tfmot().clustering.keras.strip_clustering(model))


def _kernels(model) -> list[tuple[str, np.ndarray]]:
    out = []
    for layer in model.layers:
        for attr in prunable_weights(layer):
            w = getattr(layer, attr, None)
            if w is not None:
                out.append((layer.name, np.asarray(w.numpy())))
    return out


def weight_stats(model) -> list[dict]:
    """Per prunable layer: weights, zeros, sparsity and distinct values (per layer and the most in one output
    channel, which is what survives BatchNormalization folding and per-channel int8)."""
    return [weight_stats_of(name, w) for name, w in _kernels(model)]


def check_preserve(model, preserve: Preserve) -> None:
    """`preserve: sparsity` needs a pruned model and `clusters` a clustered one; say so instead of letting tfmot
    quietly train a dense model."""
    if preserve == "none":
        return
    stats = weight_stats(model)
    if preserve in ("sparsity", "both") and not any(s["sparsity"] >= 0.2 for s in stats):
        most = max((s["sparsity"] for s in stats), default=0.0)
        raise EdgepipeError(
            f"qat: preserve: {preserve} on model '{model.name}', which was never pruned (its "
            f"sparsest kernel has {100 * most:.0f} % zeros)",
            "put a prune stage before this qat stage, or use preserve: none",
        )
    if preserve in ("clusters", "both") and not any(
        s["max_unique_per_channel"] <= 256 and s["unique"] < s["weights"] / 4 for s in stats if s["weights"] >= 64
    ):
        raise EdgepipeError(
            f"qat: preserve: {preserve} on model '{model.name}', whose weights were never clustered",
            "put a cluster stage before this qat stage, or use preserve: none",
        )


def quantize_scheme(preserve: Preserve):
    """tfmot's quantize scheme for QAT that keeps zeros (PQAT), clusters (CQAT) or both (PCQAT)."""
    tfmot = _tfmot()
    combine = tfmot.experimental.combine
    if preserve == "sparsity":
        return combine.Default8BitPrunePreserveQuantizeScheme()
    if preserve == "clusters":
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)
    if preserve == "both":
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
    return None


def strip_cqat(model, preserve: Preserve):
    """After cluster-preserving QAT: the clustered kernels written back and tfmot's extra variables (centroids,
    indices) dropped, so the model saves and reloads as an ordinary QAT model."""
    if preserve not in ("clusters", "both"):
        return model
    return _tfmot().experimental.combine.strip_clustering_cqat(model)
