"""Devices: target profiles, running .tflite files, measuring on a device, linting, TFLite Micro."""
