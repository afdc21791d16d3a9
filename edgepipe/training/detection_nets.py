"""Detection model builders: a heat map of object centres at 1/8 of the input's resolution.

The same contract as `nets` (`builder(input_shape, num_classes, *, dropout, kernel_initializer,
kernel_regularizer, **arch_args)`), with one output: per cell of the 1/8-resolution grid, a softmax over
background (channel 0) and the classes, ending in a Softmax layer named `probs` whose input distillation
takes as logits. With `size_head`, two more channels follow the softmax: the object's width and height as
fractions of the image (a sigmoid), so that one output tensor carries both and the decoding (Python, C) reads
one buffer.
"""

from __future__ import annotations

from edgepipe.training.blocks import conv_bn_relu


def fomo(
    input_shape,
    num_classes,
    *,
    alpha=0.35,
    head_filters=32,
    bn_momentum=0.9,
    dropout=0.0,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
):
    """Edge Impulse's FOMO as published in 2022: MobileNetV2 (`alpha`) cut at `block_6_expand_relu` (1/8
    resolution), a `head_filters` 1x1 conv and a (classes + background) 1x1 conv. From scratch: no ImageNet
    weights offline, and none exist for one channel.

    `bn_momentum` replaces Keras' 0.999 in every BatchNormalization: from scratch, in the few thousand steps of
    a short training, moving statistics that slow lag the weights so far that the model, right on its
    training batches, outputs background everywhere at inference (F1 0 on synth:digits after 5 epochs; 0.80
    with the batches' own statistics). FOMO fine-tunes ImageNet weights, whose statistics are already right."""
    from edgepipe.core._tf import keras

    base = keras.applications.MobileNetV2(input_shape=tuple(input_shape), alpha=alpha, weights=None, include_top=False)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    x = base.get_layer("block_6_expand_relu").output
    return _head(
        base.input,
        x,
        num_classes,
        head_filters,
        dropout,
        kernel_initializer,
        kernel_regularizer,
        size_head=False,
        name="fomo",
    )


def centroid_net(
    input_shape,
    num_classes,
    *,
    widths=(8, 16, 32, 32),
    head_filters=32,
    size_head=False,
    dropout=0.0,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
):
    """edgepipe's candidate: plain 3x3 convolutions (strides 2, 2, 2, then 1 for every further width), the same
    head as FOMO and an optional size head. No depthwise convolutions: on a Cortex-M4 with CMSIS-NN they cost
    several times the instructions per multiply-accumulate of a plain convolution."""
    from edgepipe.core._tf import keras

    if len(widths) < 3:
        raise ValueError(
            f"widths {list(widths)} give less than the 3 stride-2 convolutions of a 1/8 grid; fix: "
            "give at least 3 widths"
        )
    inputs = keras.Input(tuple(input_shape))
    conv = conv_bn_relu(kernel_initializer, kernel_regularizer)
    x = inputs
    for i, width in enumerate(widths):
        x = conv(x, int(width), 3, 2 if i < 3 else 1)
    return _head(
        inputs,
        x,
        num_classes,
        head_filters,
        dropout,
        kernel_initializer,
        kernel_regularizer,
        size_head=size_head,
        name="centroid_net",
    )


def _head(inputs, x, num_classes, filters, dropout, initializer, regularizer, *, size_head, name):
    """A `filters` 1x1 conv, then per cell (classes + background) logits and their Softmax (`probs`); with
    `size_head`, the sigmoid width and height concatenated after them."""
    from edgepipe.core._tf import keras

    L = keras.layers
    features = L.Conv2D(
        filters, 1, kernel_initializer=initializer, kernel_regularizer=regularizer, activation="relu", name="head"
    )(x)
    if dropout:
        features = L.Dropout(dropout)(features)
    logits = L.Conv2D(
        num_classes + 1, 1, kernel_initializer=initializer, kernel_regularizer=regularizer, name="logits"
    )(features)
    probs = L.Softmax(name="probs")(logits)
    if not size_head:
        return keras.Model(inputs, probs, name=name)
    size = L.Conv2D(
        2, 1, kernel_initializer=initializer, kernel_regularizer=regularizer, activation="sigmoid", name="size"
    )(features)
    return keras.Model(inputs, L.Concatenate(name="heatmap_size")([probs, size]), name=name)
