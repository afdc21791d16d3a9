"""Run one `.tflite` N times on the emulated Pi, for the instruction counter (`insn_count`).

Runs on the emulated arm64 python (standard library, numpy and LiteRT only, like the device runner):

    python invoke_loop.py MODEL.tflite INVOKES THREADS

The input is fixed pseudo-random data of the model's input type (dense kernels do not branch on values;
a fixed seed keeps the runs of one count identical). LiteRT applies XNNPACK by default, as on a Pi.
"""

import sys

import numpy as np

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # the older wheel, as the device runner allows
    from tflite_runtime.interpreter import Interpreter


def main(argv: list[str]) -> None:
    path, invokes, threads = argv[0], int(argv[1]), int(argv[2])
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            x = rng.integers(info.min, info.max, size=d["shape"], endpoint=True).astype(d["dtype"])
        else:
            x = rng.random(d["shape"], dtype=np.float32).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
    for _ in range(invokes):
        interp.invoke()


if __name__ == "__main__":
    main(sys.argv[1:])
