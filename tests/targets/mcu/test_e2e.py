"""End to end on the emulated Cortex-M4: build + link + run the MNIST student.

Skipped with a reason when the toolchain, QEMU or the TFLM sources are
missing.  The first run compiles ~160 objects (a few CPU minutes); later runs
reuse the object cache and take seconds.
"""

import numpy as np
import pytest

from edgepipe.targets.mcu.errors import McuError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mnist_fw(tflm_sources, toolchain, tmp_path_factory, mnist_model):
    MNIST_MODEL = mnist_model
    from edgepipe.targets.mcu.build import build
    from edgepipe.targets.mcu.prepare import prepare_firmware

    b = build(tflm_sources, "cortex-m4", model=MNIST_MODEL, progress=False)
    fw, info = prepare_firmware(MNIST_MODEL, b, work_dir=tmp_path_factory.mktemp("fw"))
    return b, fw, info


def test_build_is_cached(tflm_sources, toolchain, mnist_fw, mnist_model):
    from edgepipe.targets.mcu.build import build

    b2 = build(tflm_sources, "cortex-m4", model=mnist_model, progress=False)
    assert b2.compiled == 0 and b2.cached == b2.objects
    assert b2.archives == mnist_fw[0].archives


def test_run_matches_host_tflm(mnist_fw, mnist_model):
    MNIST_MODEL = mnist_model
    from edgepipe.targets.mcu.memory import memory_report
    from edgepipe.targets.mcu.run import run

    b, fw, info = mnist_fw
    assert info["arena_used_bytes"] > 0 and info["arena_size"] >= info["arena_used_bytes"]
    x = np.random.default_rng(1).integers(-128, 128, (5, 28, 28, 1), dtype=np.int8)
    r = run(fw, inputs=x, timeout=120)
    assert r.outputs.shape == (5, 10)
    assert abs(r.calib_instr_per_tick - 40) < 0.04
    assert (
        1e4 < r.instructions.mean() < 1e7 and r.instructions.max() - r.instructions.min() < 0.01 * r.instructions.mean()
    )
    mem = memory_report(fw.elf, fw.map).with_measured(r.summary)
    assert mem.flash_by_origin["model data"] >= MNIST_MODEL.stat().st_size
    assert mem.flash_by_origin["CMSIS-NN"] > 0 and mem.flash_by_origin["TFLM runtime"] > 0
    assert sum(mem.flash_by_origin.values()) == mem.flash_bytes
    assert sum(mem.ram_by_origin.values()) == mem.ram_bytes
    assert mem.measured["stack_used_bytes"] > 0
    try:
        from edgepipe.targets.mcu.reference import tflm_python

        host = tflm_python(MNIST_MODEL, x)
    except McuError as e:
        pytest.skip(str(e))
    assert np.array_equal(host, r.outputs)


def test_fit_error_with_tiny_flash(mnist_fw, tmp_path):
    from edgepipe.targets.mcu.link import link_firmware

    b, fw, info = mnist_fw
    with pytest.raises(McuError) as ei:
        link_firmware(fw.work_dir / "bundle", "cortex-m4", b, work_dir=tmp_path, flash_size=32 * 1024)
    s = str(ei.value)
    assert "\n" not in s
    assert "model does not fit the board: FLASH overflowed by" in s


def test_fit_error_ram(mnist_fw, tmp_path):
    from edgepipe.targets.mcu.link import link_firmware

    b, fw, info = mnist_fw
    with pytest.raises(McuError) as ei:
        link_firmware(fw.work_dir / "bundle", "cortex-m4", b, work_dir=tmp_path, ram_size=16 * 1024)
    assert "RAM overflowed by" in str(ei.value)


def test_timeout_kills_qemu(mnist_fw):
    from edgepipe.targets.mcu.run import run

    b, fw, info = mnist_fw
    x = np.zeros((20000, 28, 28, 1), np.int8)
    with pytest.raises(McuError) as ei:
        run(fw, inputs=x, timeout=1.0)
    assert "wall-clock limit" in str(ei.value)


def test_wrong_input_size_is_one_line(mnist_fw):
    from edgepipe.targets.mcu.run import run

    b, fw, info = mnist_fw
    with pytest.raises(McuError) as ei:
        run(fw, inputs=np.zeros((2, 100), np.int8), timeout=60)
    assert "input record size mismatch" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(McuError):
        run(fw, inputs=np.zeros((2, 784), np.float32), timeout=60)


def test_arena_too_small_is_one_line(mnist_fw, tmp_path):
    import shutil

    from edgepipe.targets.mcu.bundle import write_model_io
    from edgepipe.targets.mcu.link import link_firmware
    from edgepipe.targets.mcu.run import run

    b, fw, info = mnist_fw
    shutil.copytree(fw.work_dir / "bundle", tmp_path / "bundle")
    write_model_io(tmp_path / "bundle", 1024)
    fw2 = link_firmware(tmp_path / "bundle", "cortex-m4", b, work_dir=tmp_path / "w")
    with pytest.raises(McuError) as ei:
        run(fw2, inputs=None, timeout=60)
    assert "AllocateTensors failed" in str(ei.value)


def test_fault_is_one_line(mnist_fw, tmp_path):
    """A firmware that executes an undefined instruction: one line, exit 99."""
    from edgepipe.targets.mcu.link import link_firmware
    from edgepipe.targets.mcu.run import run

    b, fw, info = mnist_fw
    fw2 = link_firmware(fw.work_dir / "bundle", "cortex-m4", b, work_dir=tmp_path, defines=["EDGEPIPE_SELFTEST_FAULT"])
    with pytest.raises(McuError) as ei:
        run(fw2, inputs=None, timeout=60)
    s = str(ei.value)
    assert s.startswith("firmware fault on mps2-an386: HardFault pc=0x")
    assert "\n" not in s


def test_qemu_failure_is_one_line(toolchain, tmp_path):
    """QEMU itself failing (here: not an ELF) -> one line naming the status."""
    from edgepipe.targets.mcu.run import run

    bogus = tmp_path / "fw.elf"
    bogus.write_text("not an elf")
    with pytest.raises(McuError) as ei:
        run(bogus, "mps2-an386", inputs=None, timeout=30)
    s = str(ei.value)
    assert s.startswith("QEMU exited with status") and "\n" not in s
