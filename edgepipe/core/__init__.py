"""Leaf utilities every other part of edgepipe stands on; nothing here imports from above."""
