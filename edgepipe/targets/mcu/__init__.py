"""Board in a box: measure an int8 ``.tflite`` model on an emulated Cortex-M.

TensorFlow Lite Micro (TFLM) with CMSIS-NN kernels is cross-compiled with
Debian's ``arm-none-eabi`` toolchain -- only the sources a given model needs --
and linked with a small bare-metal harness into an ELF that runs on
``qemu-system-arm`` (mps2-an386 = Cortex-M4F, mps2-an500 = Cortex-M7F).
The emulator reports exact instruction counts per inference, the output
bytes, the arena, stack and heap use; the linked ELF and its map give the
deployable flash and RAM broken down by origin.

Modules:
    errors        McuError (one-line "what; fix: how" failures)
    toolchain     find arm-none-eabi-* and qemu-system-arm, with versions
    sources       locate / unpack the TFLM sources (tarball mirror -> cache)
    model         read a .tflite flatbuffer (ops, tensors, quantization)
    resolver      generate model_ops.h from TFLM's micro_mutable_op_resolver.h
    cores         the Cortex-M cores, the QEMU boards emulating them, TFLM's flags per core
    source_lists  which TFLM and CMSIS-NN sources a model's build compiles
    compiler      the object cache: compile a source once, static archives
    build         compile TFLM core, CMSIS-NN and the model's kernels (cached)
    bundle        write model_data.{h,cc}, model_ops.h, model_io.h
    link          link the harness firmware for a bundle (fit errors name the region)
    memory        flash and RAM of a linked firmware, by origin
    run           run a firmware on QEMU: outputs and instructions per inference
    arena         the smallest tensor arena, one search for this host's TFLM and for the board
    prepare       a model's firmware: bundle, arena sized on the board, final link
    reference     host reference outputs (tflite_micro, ai_edge_litert)
    calibrate     MLPerf Tiny calibration of cycles per instruction
    measure       a bench's figures for a set of models: accuracy, instructions, flash, RAM
    project       a bundle's Makefile, main.cc and make check for an Arm core
    project_detect  what a detection bundle adds: the C decoding, its grid facts, its board check
    detect_decode   build and run the C decoding on the board or host (its equality with Python)
"""

from edgepipe.targets.mcu.errors import McuError

__all__ = ["McuError"]
