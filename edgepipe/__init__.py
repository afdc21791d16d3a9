"""edgepipe: take a Keras model from data to benchmarked LiteRT artifacts for edge devices.

Public API (everything else is internal):
    run, RunResult            run a recipe from Python (a notebook): what ran and the report's rows
    load_recipe, find_recipe  read and validate a recipe
    Runner                    run a recipe's stale stages
    EdgepipeError             the one error users see
"""

import os

# tfmot needs the Keras 2 API; this must be set before TensorFlow is imported anywhere.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.pipeline.api import RunResult, run
from edgepipe.pipeline.recipe import find_recipe, load_recipe
from edgepipe.pipeline.runner import Runner

__version__ = "0.1.0"
__all__ = ["EdgepipeError", "RecipeError", "RunResult", "Runner", "find_recipe", "load_recipe", "run", "__version__"]
