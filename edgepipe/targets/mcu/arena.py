"""The smallest tensor arena in which TensorFlow Lite Micro allocates a model: one search, used both by this
host's interpreter (`edgepipe.targets.tflm`) and by the emulated board (`edgepipe.targets.mcu.prepare`)."""

from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["smallest_arena"]


def smallest_arena(
    works: Callable[[int], bool], first: int, *, failing: int = 0, growth: Sequence[int] = (0,), multiple: int = 1
) -> int | None:
    """The smallest arena size, to within 16 bytes, in which `works(size)` holds.

    Tries `first + step` for each step of `growth` in turn until a size works, then bisects between it and
    the largest size that failed until the two are at most 16 bytes apart.

    Args:
        works: whether the model allocates (and runs) in an arena of that many bytes; a size that works is
            taken to mean every larger one does.
        first: the first size tried.
        failing: a size known, or taken, to be too small: the lower end of the bisection until a tried size
            fails.
        growth: what is added to `first`, one step after another; `(0,)` tries `first` alone.
        multiple: sizes tried are multiples of it (a divisor of 16; `first`, `failing` and the steps must
            be multiples of it too).

    Returns:
        the working size, at most 16 bytes above one that fails; None when no size of the growth works.
    """
    # TFLite Micro cannot say beforehand how big an arena a model needs (its arena_used_bytes() can fall short
    # of the scratch kernels ask for while AllocateTensors plans), so the size is searched for: grown until the
    # model allocates, then bisected to 16 bytes, the alignment of TFLite Micro's buffers.
    if 16 % multiple or any(n % multiple for n in (first, failing, *growth)):
        raise ValueError(
            f"the sizes tried ({first}, {failing}, {tuple(growth)}) must be multiples of {multiple}, "
            "itself a divisor of 16"
        )
    below = failing
    for step in growth:
        size = first + step
        if works(size):
            break
        below = size
    else:
        return None
    while size - below > 16:
        mid = (below + size) // 2 // multiple * multiple
        below, size = (below, mid) if works(mid) else (mid, size)
    return size
