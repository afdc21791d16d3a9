"""The arena search both TFLite Micro paths use (this host's interpreter and the emulated board), on a stand-in
for a model: it allocates in any arena from `need` bytes up."""

import pytest

from edgepipe.targets.mcu.arena import smallest_arena

GROWTH = (0, 16, 64, 256, 1024, 4096, 16384, 65536)


def model_needing(need: int, tried: list[int]):
    def works(size: int) -> bool:
        tried.append(size)
        return size >= need

    return works


@pytest.mark.parametrize("need", [1, 4632, 4784, 55_984, 103_672])
def test_from_a_generous_size_any_byte_count_is_tried(need):
    """The host: bisected from 0 to a generous size, to within 16 bytes above the need, in ~log2 tries."""
    tried = []
    arena = smallest_arena(model_needing(need, tried), 1_031_230)
    assert need <= arena < need + 16 and tried[0] == 1_031_230
    assert len(tried) <= 18 and any(size % 16 for size in tried)


@pytest.mark.parametrize("need, tries", [(4160, 1), (4176, 2), (4200, 5), (60_000, 20)])
def test_from_what_tflm_reported_it_grows_then_bisects_in_16_byte_units(need, tries):
    """The board: starting at arena_used_bytes() rounded up, it finds the need rounded up to 16 bytes."""
    tried = []
    arena = smallest_arena(model_needing(need, tried), 4160, failing=4144, growth=GROWTH, multiple=16)
    assert arena == -(-need // 16) * 16 and len(tried) == tries
    assert all(size % 16 == 0 for size in tried)


def test_a_model_that_never_allocates_gives_none():
    tried = []
    assert smallest_arena(model_needing(10**9, tried), 4160, failing=4144, growth=GROWTH, multiple=16) is None
    assert tried == [4160 + step for step in GROWTH]
    assert smallest_arena(model_needing(10**9, []), 65536) is None


def test_sizes_off_the_grid_are_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        smallest_arena(model_needing(100, []), 4164, growth=GROWTH, multiple=16)
    with pytest.raises(ValueError, match="multiples of 32"):
        smallest_arena(model_needing(100, []), 4160, multiple=32)
