"""The zoo's building blocks, in the pattern tfmot folds and quantizes: a convolution without bias or
activation, then BatchNormalization, then ReLU."""

from __future__ import annotations


def conv_bn_relu(initializer, regularizer):
    """`block(x, filters, kernel, stride)`: Conv2D (same padding), BatchNormalization, ReLU."""
    from edgepipe.core._tf import keras

    L = keras.layers

    def block(x, filters, kernel, stride):
        x = L.Conv2D(
            filters,
            kernel,
            stride,
            padding="same",
            use_bias=False,
            kernel_initializer=initializer,
            kernel_regularizer=regularizer,
        )(x)
        x = L.BatchNormalization()(x)
        return L.ReLU()(x)

    return block


def ds_block(initializer, regularizer):
    """`block(x, filters, stride)`: a depthwise-separable block (3x3 depthwise, 1x1 pointwise), each part
    followed by BatchNormalization and ReLU."""
    from edgepipe.core._tf import keras

    L = keras.layers

    def block(x, filters, stride):
        x = L.DepthwiseConv2D(
            3,
            stride,
            padding="same",
            use_bias=False,
            depthwise_initializer=initializer,
            depthwise_regularizer=regularizer,
        )(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.Conv2D(filters, 1, use_bias=False, kernel_initializer=initializer, kernel_regularizer=regularizer)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU()(x)

    return block
