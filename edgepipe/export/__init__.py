"""Keras to `.tflite` and what describes the file: conversion, quantization debugging, sidecars, weights.

Modules:
    converter    Keras -> .tflite for each variant (float32, float16, dynamic, int8, int16x8), `FORMATS`
    quant_debug  TensorFlow's quantization debugger: layers ranked by int8 error; int8 with layers kept float
    sidecar      the JSON beside every .tflite (read from the file itself for an imported one)
    weights      a .tflite's filters read back (zeros, distinct values per channel)

It reads the files it writes with the host's LiteRT (`edgepipe.targets.litert`), as a device would run
them; devices never need Keras, so `targets` does not import `export`.
"""
