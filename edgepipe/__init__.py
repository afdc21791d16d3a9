"""edgepipe: take a Keras model from data to benchmarked LiteRT artifacts for edge devices.

Public API (everything else is internal):
    load_recipe, find_recipe  read and validate a recipe
    Runner                    run a recipe's stale stages
    EdgepipeError             the one error users see
"""

import os

# tfmot needs the Keras 2 API; this must be set before TensorFlow is imported anywhere.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from edgepipe.core.errors import EdgepipeError, RecipeError  # noqa: E402
from edgepipe.pipeline.recipe import find_recipe, load_recipe  # noqa: E402
from edgepipe.pipeline.runner import Runner  # noqa: E402

__version__ = "0.1.0"
__all__ = ["EdgepipeError", "RecipeError", "Runner", "find_recipe", "load_recipe", "__version__"]
