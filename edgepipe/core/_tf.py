"""The one place TensorFlow is imported, with the Keras 2 API (tf_keras).

tensorflow-model-optimization's QAT and pruning only work with Keras 2, so every edgepipe model is a
tf_keras model, and TF_USE_LEGACY_KERAS must be set before TensorFlow is first imported. Stage modules
import this lazily (inside functions) so that recipe validation and "nothing to do" runs stay fast.
"""

import os

# edgepipe/__init__.py sets it before this runs; repeated so that this module states what it needs.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ log noise (cuInit, NodeDef attrs) is not for users

from edgepipe.core.native import quiet_native

# TensorFlow's native code logs oneDNN and CUDA notices to fd 2 at import, before TF_CPP_MIN_LOG_LEVEL
# is read, which would bury edgepipe's one-line errors. Import failures still raise as usual.
with quiet_native():
    import tensorflow as tf
    import tf_keras as keras

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]
