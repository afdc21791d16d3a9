"""The table of stage kinds: the single source of truth for what a recipe's `kind:` may name.

This is the only module that imports every stage; the machinery (recipe, runner, cli) reads the table
from here, and no stage imports it, so the imports run one way.
"""

from __future__ import annotations

from edgepipe.core.stage import StageKind


def kinds() -> dict[str, StageKind]:
    """All stage kinds by name. Stage modules import TensorFlow lazily, so this is cheap."""
    from edgepipe.stages import (
        bench,
        bundle,
        cluster,
        convert,
        data,
        distill,
        import_model,
        prune,
        qat,
        report,
        search,
        train,
        transfer,
    )

    table = [
        data.KIND,
        train.KIND,
        transfer.KIND,
        distill.KIND,
        search.KIND,
        import_model.KIND,
        prune.KIND,
        cluster.KIND,
        qat.KIND,
        convert.KIND,
        bench.KIND,
        bundle.KIND,
        report.KIND,
    ]
    return {k.name: k for k in table}
