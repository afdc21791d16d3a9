"""YAML as edgepipe reads it: the safe loader, with a key given twice in one mapping an error.

Recipes and target profiles both go through `load_yaml`, so a duplicated stage or key is never silently
overwritten by the second one.
"""

from __future__ import annotations

from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error, not a silent overwrite
    (two stages called `teacher` would otherwise leave only the second)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Safe-load YAML, refusing a key given twice in one mapping (recipes and target profiles)."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
