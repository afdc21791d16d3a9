"""Linker-map parsing, origin classification, the fit error (fast, no toolchain)."""

import pytest

from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.link import _fit_error, parse_overflow
from edgepipe.targets.mcu.memory import classify, parse_map

MAP = """Archive member included to satisfy reference by file (symbol)

/x/libep_cmsis_nn.a(cmsis_nn_Source_X.o)  obj/harness.o (arm_x)

Discarded input sections

 .text          0x00000000        0x0 obj/startup.o
 .text.unused   0x00000000       0x40 obj/harness.o

Memory Configuration

Name             Origin             Length             Attributes
FLASH            0x00000000         0x00400000         xr

Linker script and memory map

LOAD obj/startup.o
                0x00004000                        __stack_size = 0x4000

.vectors        0x00000000       0xc0
 *(.vectors)
 .vectors       0x00000000       0xc0 obj/startup.o
                0x00000000                g_vectors

.text           0x000000c0      0x200
 *(.text*)
 .text.Reset_Handler
                0x000000c0       0x10 obj/startup.o
                0x000000c0                Reset_Handler
 .text._ZN6tflite16MicroInterpreter6InvokeEv
                0x000000d0       0x80 /c/lib/aa/libep_tflm_core.a(tensorflow_lite_micro_micro_interpreter.o)
 .text._ZN6tflite18QuantizeMultiplierEdPlPi
                0x00000150       0x30 /c/lib/aa/libep_tflm_core.a(tensorflow_lite_kernels_internal_quantization_util.o)
 *fill*         0x00000180        0x2 
 .text.arm_convolve_s8
                0x00000182       0x60 /c/lib/bb/libep_cmsis_nn.a(cmsis_nn_Source_ConvolutionFunctions_arm_convolve_s8.o)
 .text.Eval     0x000001e2       0x20 /c/lib/cc/libep_tflm_kernels.a(tensorflow_lite_micro_kernels_cmsis_nn_conv.o)
 .text          0x00000202       0xbe /usr/lib/arm-none-eabi/lib/thumb/v7e-m+fp/hard/libc_nano.a(lib_a-memcpy.o)

.rodata         0x000002c0      0x110
 .rodata.edgepipe_model
                0x000002c0      0x100 obj/model_data.o
                0x000002c0                g_model_data
 .rodata.g_model_data_len
                0x000003c0        0x4 obj/model_data.o
 .rodata        0x000003c4        0xc /usr/lib/gcc/arm-none-eabi/12.2.1/thumb/v7e-m+fp/hard/libgcc.a(_udivmoddi4.o)

.data           0x20000000        0x8 load address 0x000003d0
 .data.g_brk    0x20000000        0x8 obj/syscalls.o

.bss            0x20000010     0x1010
 .bss.edgepipe_arena
                0x20000010     0x1000 obj/arena.o
 .bss.x         0x20001010       0x10 /c/lib/aa/libep_tflm_core.a(tensorflow_lite_micro_micro_allocator.o)
"""


def test_parse_map_skips_discarded_and_joins_long_names():
    secs = parse_map(MAP)
    names = [s[1] for s in secs]
    assert ".text.unused" not in names  # discarded list ignored
    assert ".text.Reset_Handler" in names  # name on its own line
    by = {s[1]: s for s in secs}
    assert by[".text._ZN6tflite16MicroInterpreter6InvokeEv"][2] == 0x80
    assert by[".text.Eval"][0] == ".text"
    assert by[".bss.edgepipe_arena"][2] == 0x1000
    fills = [s for s in secs if s[3] == "*fill*"]
    assert fills and fills[0][2] == 2
    assert sum(s[2] for s in secs if s[0] == ".text") == 0x200


def test_classify_origins():
    secs = {s[1]: classify(s[3], s[1]) for s in parse_map(MAP) if s[3] != "*fill*"}
    assert secs[".vectors"] == "harness"
    assert secs[".text._ZN6tflite16MicroInterpreter6InvokeEv"] == "TFLM runtime"
    assert secs[".text._ZN6tflite18QuantizeMultiplierEdPlPi"] == "TFLM kernels"
    assert secs[".text.arm_convolve_s8"] == "CMSIS-NN"
    assert secs[".text.Eval"] == "TFLM kernels"
    assert secs[".text"] == "libc/libm/libgcc"
    assert secs[".rodata"] == "libc/libm/libgcc"
    assert secs[".rodata.edgepipe_model"] == "model data"
    assert secs[".rodata.g_model_data_len"] == "model data"


def test_not_a_map():
    with pytest.raises(McuError):
        parse_map("hello")


def test_overflow_parsing_and_fit_error_line():
    err = (
        "/usr/bin/ld: fw.elf section `.rodata' will not fit in region `FLASH'\n"
        "/usr/bin/ld: region `FLASH' overflowed by 33296 bytes\n"
        "/usr/bin/ld: region `RAM' overflowed by 12 bytes\n"
        "collect2: error: ld returned 1 exit status\n"
    )
    over = parse_overflow(err)
    assert over == [("FLASH", 33296), ("RAM", 12)]
    e = _fit_error(over, 65536, 1024)
    s = str(e)
    assert "\n" not in s
    assert "FLASH overflowed by 33,296 bytes (region is 65,536 B)" in s
    assert "RAM overflowed by 12 bytes" in s and "; fix: " in s
