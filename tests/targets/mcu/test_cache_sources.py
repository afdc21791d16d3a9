"""Object-cache keys and the source mirror unpack (fast, no cross compiler)."""

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from edgepipe.targets.mcu.compiler import Compiler, _parse_depfile
from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.source_lists import _make_list, _specialize
from edgepipe.targets.mcu.sources import DOWNLOADS_REL, ENV_VAR, locate_sources
from edgepipe.targets.mcu.toolchain import Toolchain
from tests.targets.mcu.conftest import MIRROR

MIRROR_SRC = MIRROR / "src"


def _tc(version="gcc 12.2"):
    return Toolchain(
        gcc="/usr/bin/arm-none-eabi-gcc",
        gxx="/usr/bin/arm-none-eabi-g++",
        ar="/usr/bin/arm-none-eabi-ar",
        size="/usr/bin/arm-none-eabi-size",
        nm="/usr/bin/arm-none-eabi-nm",
        qemu="/usr/bin/qemu-system-arm",
        gcc_version=version,
        qemu_version="qemu 7.2",
    )


def test_cache_key_depends_on_content_flags_compiler(tmp_path):
    src = tmp_path / "a.cc"
    src.write_text("int a;\n")
    c = Compiler(tmp_path, _tc(), tmp_path / "cache")
    k = c.key1("a.cc", ["-O2"], ["."])
    assert k == c.key1("a.cc", ["-O2"], ["."])  # deterministic
    assert k != c.key1("a.cc", ["-Os"], ["."])  # flags
    assert k != c.key1("a.cc", ["-O2"], [".", "inc"])  # include set
    assert k != Compiler(tmp_path, _tc("gcc 13"), tmp_path / "cache").key1("a.cc", ["-O2"], ["."])  # compiler version
    time.sleep(0.01)
    src.write_text("int b;\n")
    assert k != c.key1("a.cc", ["-O2"], ["."])  # content


def test_manifest_invalidated_by_header_change(tmp_path):
    (tmp_path / "a.cc").write_text('#include "h.h"\n')
    h = tmp_path / "h.h"
    h.write_text("#define X 1\n")
    c = Compiler(tmp_path, _tc(), tmp_path / "cache")
    k = c.key1("a.cc", [], ["."])
    from edgepipe.targets.mcu.compiler import _MEMO

    obj = c.obj_dir / "ab" / "abcd.o"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"obj")
    man = c.man_dir / k[:2] / f"{k}.json"
    man.parent.mkdir(parents=True, exist_ok=True)
    man.write_text(json.dumps({"src": "a.cc", "obj": "abcd", "deps": {"h.h": _MEMO.get(str(h))}}))
    assert c.lookup(k) == obj
    time.sleep(0.01)
    h.write_text("#define X 2\n")
    assert c.lookup(k) is None
    obj.unlink()
    h.write_text("#define X 1\n")
    assert c.lookup(k) is None  # manifest points at a missing object


def test_depfile_and_makefile_helpers(tmp_path):
    d = "obj.o: a.cc inc/b.h \\\n /usr/include/newlib/stdint.h c\\ d.h\n"
    assert _parse_depfile(d) == ["a.cc", "inc/b.h", "/usr/include/newlib/stdint.h", "c d.h"]
    mk = "X := \\\n$(TENSORFLOW_ROOT)a/b.cc \\\n$(TENSORFLOW_ROOT)a/c.cc\n\nY := 1\n"
    assert _make_list(mk, "X") == ["a/b.cc", "a/c.cc"]
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "c.cc").write_text("")
    assert _specialize(["a/b.cc", "a/c.cc"], tmp_path, "opt") == ["a/b.cc", "opt/c.cc"]


# ---------------------------------------------------------------- sources


def _tarball(path: Path, top: str, files: dict):
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            ti = tarfile.TarInfo(f"{top}/{name}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


PATCH = """diff --git a/include/flatbuffers/base.h b/include/flatbuffers/base.h
--- a/include/flatbuffers/base.h
+++ b/include/flatbuffers/base.h
@@ -1,2 +1,3 @@
 #ifndef B
+#define PATCHED 1
 #endif
"""


def _mirror(tmp_path) -> Path:
    src = tmp_path / "mirror" / "src"
    src.mkdir(parents=True)
    _tarball(
        src / "tflite-micro.tar.gz",
        "tflite-micro",
        {"tensorflow/lite/micro/micro_interpreter.h": "", "tensorflow/lite/micro/tools/make/flatbuffers.patch": PATCH},
    )
    _tarball(
        src / "flatbuffers.tar.gz", "flatbuffers", {"include/flatbuffers/base.h": "#ifndef B\n#endif\n", "BUILD": "x"}
    )
    for name, files in {
        "cmsis": {"CMSIS/Core/Include/core_cm4.h": ""},
        "Cortex_DFP": {"Device/ARMCM4/Include/ARMCM4.h": ""},
        "cmsis_nn": {"Source/a.c": ""},
        "gemmlowp": {"fixedpoint/fixedpoint.h": "", "BUILD": ""},
        "ruy": {"ruy/x.h": ""},
    }.items():
        _tarball(src / f"{name}.tar.gz", name, files)
    return tmp_path / "mirror"


def test_mirror_unpack_layout_patch_and_second_call(tmp_path):
    m = _mirror(tmp_path)
    cache = tmp_path / "cache"
    s = locate_sources(m, cache_dir=cache)
    dl = s.root / DOWNLOADS_REL
    assert (dl / "cmsis" / "Cortex_DFP" / "Device" / "ARMCM4" / "Include" / "ARMCM4.h").is_file()
    assert (dl / "cmsis_nn" / "Source" / "a.c").is_file()
    assert (dl / "pigweed").is_dir()
    assert not (dl / "flatbuffers" / "BUILD").exists()
    assert not (dl / "gemmlowp" / "BUILD").exists()
    assert "#define PATCHED 1" in (dl / "flatbuffers/include/flatbuffers/base.h").read_text()
    t = time.monotonic()
    s2 = locate_sources(m / "src", cache_dir=cache)  # the src folder works too
    assert time.monotonic() - t < 0.5 and s2.root == s.root
    assert not list((cache / "src").glob(".tmp-*"))


def test_killed_unpack_leaves_nothing_final(tmp_path, monkeypatch):
    import edgepipe.targets.mcu.sources as S

    m = _mirror(tmp_path)
    cache = tmp_path / "cache"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "_apply_patch", boom)
    with pytest.raises(KeyboardInterrupt):
        locate_sources(m, cache_dir=cache)
    assert [p.name for p in (cache / "src").iterdir() if p.is_dir()] == []
    monkeypatch.undo()
    s = locate_sources(m, cache_dir=cache)
    assert (s.root / "tensorflow").is_dir()


def test_missing_sources_errors(tmp_path, monkeypatch):
    import edgepipe.targets.mcu.sources as sources

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(sources, "default_mirrors", lambda: [tmp_path / "no" / "shared" / "mcu"])
    with pytest.raises(McuError) as ei:
        locate_sources()
    s = str(ei.value)
    assert "git clone https://github.com/tensorflow/tflite-micro" in s and ENV_VAR in s
    assert "\n" not in s
    with pytest.raises(McuError):
        locate_sources(tmp_path)  # neither shape
    (tmp_path / "tensorflow" / "lite" / "micro").mkdir(parents=True)
    with pytest.raises(McuError) as ei:
        locate_sources(tmp_path)  # checkout without downloads
    assert "downloads/" in str(ei.value)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(McuError) as ei:
        locate_sources()
    assert ENV_VAR in str(ei.value)


def test_pure_python_patch_matches_git(tflm_sources, tmp_path):
    """The no-git/no-patch fallback gives the same flatbuffers tree as git apply."""
    import tarfile

    from edgepipe.targets.mcu.sources import _apply_unified_diff

    with tarfile.open(MIRROR_SRC / "flatbuffers.tar.gz") as tf:
        tf.extractall(tmp_path, filter="data")
    patch = tflm_sources.root / "tensorflow/lite/micro/tools/make/flatbuffers.patch"
    _apply_unified_diff(tmp_path / "flatbuffers", patch)
    ref = tflm_sources.downloads / "flatbuffers"
    for rel in (
        "include/flatbuffers/base.h",
        "include/flatbuffers/default_allocator.h",
        "include/flatbuffers/flatbuffer_builder.h",
    ):
        assert (tmp_path / "flatbuffers" / rel).read_text() == (ref / rel).read_text(), rel


def test_the_calibration_fit_is_the_median_ratio_and_its_leave_one_out(tmp_path):
    from edgepipe.targets.mcu.calibrate import fit_factor

    instr = {"a": 1e6, "b": 2e6, "c": 3e6}
    ms = {"a": 1.5e6 / 120e3, "b": 2 * 1.6e6 / 120e3, "c": 3 * 2.0e6 / 120e3}  # 1.5, 1.6, 2.0 cycles/instr
    fit = fit_factor(instr, ms, 120e6)
    assert fit["factor"] == pytest.approx(1.6)
    assert fit["rows"]["a"]["loo_factor"] == pytest.approx(1.8)  # median of b and c
    assert fit["rows"]["c"]["error_pct"] == pytest.approx(100 * (1.6 / 2.0 - 1))


def test_the_default_mirror_is_found_beside_the_checkout(monkeypatch):
    import edgepipe.targets.mcu.sources as sources

    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    found = [m for m in sources.default_mirrors() if (m / "src" / "tflite-micro.tar.gz").is_file()]
    if not found:
        pytest.skip("no ../shared/mcu mirror beside this checkout")
    assert sources.locate_sources().kind == "mirror"
