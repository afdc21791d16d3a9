"""McuError formatting and toolchain discovery failures (fast)."""

import pytest

from edgepipe.core import system
from edgepipe.targets.mcu.errors import McuError, one_line
from edgepipe.targets.mcu.toolchain import find_toolchain


def test_error_is_one_line_what_fix():
    e = McuError("compile\nfailed:  here", "do\tthis\nnow", detail="long\nlog")
    assert str(e) == "compile failed: here; fix: do this now"
    assert "\n" not in str(e)
    assert e.message == "compile failed: here" and e.fix == "do this now"
    assert e.detail == "long\nlog"


def test_one_line_truncates():
    s = one_line("x" * 1000, 50)
    assert len(s) == 50 and s.endswith("...")


def test_missing_toolchain_names_debian_packages(tmp_path):
    with pytest.raises(McuError) as ei:
        find_toolchain(search_path=str(tmp_path))
    msg = str(ei.value)
    assert "\n" not in msg
    assert "arm-none-eabi-gcc" in msg and "qemu-system-arm" in msg
    assert (
        "apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm"
    ) in msg
    assert all(p.name in msg for p in system.PACKAGES if p.group == "run")
