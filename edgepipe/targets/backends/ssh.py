"""A Linux device over SSH (a Raspberry Pi, any Linux board, a fleet of them), and Coral's Edge TPU.

How a device is benched: `device_runner.py` (the code that measures on this host too), the models and
the test split go to a fresh temporary folder on the device (`edgepipe.targets.remote`); each model runs
there in its own process, so its accuracy, latency and memory are the device's, tagged `target`. A
fleet (`host` plus the bench's `fleet`) is benched in parallel, a bounded pool; the first device's
figures are the row's, every device's are in the row's `fleet`.

How a Coral is benched: the Edge TPU runs only what `edgetpu_compiler` compiled, so each model is
compiled on this machine first, into the bench's `edgetpu/` folder (what a coral bundle ships), and the
compiled file is benched on the device through the libedgetpu delegate; the compiler's operation
counts go into the row.

An emulated device behind SSH (`edgepipe.targets.emulated_pi`, started by hand or by a test) answers
like a device but says so in its provenance: its accuracy is the device's, its timings and memory are
the emulator's and are not reported. A bench's `measure: emulated` skips SSH altogether: the emulated
Pi's python runs here (`pi_emulated`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.requirements import Requirement, tools
from edgepipe.targets.backends.protocol import Backend, command
from edgepipe.targets.lint import Runtime
from edgepipe.targets.profiles import Target

# Operators the Edge TPU compiler can map (coral.ai "TensorFlow models on the Edge TPU", supported
# operations); anything else, and everything after it in the graph, runs on the host CPU. The versions:
# the first of each operator edgetpu_compiler 16.0 (its last release) refuses ("Didn't find op for builtin
# opcode 'CONV_2D' version '6'"), as reported in google-coral/edgetpu #631 (CONV_2D), #845 (TRANSPOSE_CONV),
# #879 (QUANTIZE) and google-coral/libedgetpu #71 (EXP). Newer TensorFlow converters write these versions;
# an op not listed is not known to be refused.
EDGE_TPU = Runtime(
    "the Edge TPU",
    frozenset(
        """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D EXPAND_DIMS FULLY_CONNECTED HARD_SWISH
L2_NORMALIZATION LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PACK PAD PRELU QUANTIZE DEQUANTIZE REDUCE_MAX
REDUCE_MIN RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SLICE SOFTMAX
SPACE_TO_DEPTH SPLIT SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM TANH TRANSPOSE TRANSPOSE_CONV
""".split()
    ),
    refused_versions={"CONV_2D": 6, "TRANSPOSE_CONV": 4, "QUANTIZE": 3, "EXP": 2},
    refused_by="edgetpu_compiler 16.0",
    refused_fix="convert with an older TensorFlow (2.8 and before write versions it takes), or keep this op off the "
    "Edge TPU",
)


class SshLinux(Backend):
    name = "Linux device over SSH"
    takes_host = True
    measure_choices = ("emulated",)  # a Pi's profile: its emulation on this machine (pi_emulated)

    def needs(self, target: Target, params) -> list[Requirement]:
        return [
            tools(["ssh"], "an SSH client, to reach the device"),
            *[
                _answers(h, params.identity, tuple(params.ssh_options))
                for h in dict.fromkeys([params.host, *params.fleet])
                if h
            ],
        ]

    def check(self, target: Target, params) -> None:
        if not params.host:
            raise EdgepipeError(
                f"target {target.name} is reached over SSH but no host was given",
                "pass --host user@address (or set the bench stage's host param)",
            )

    def environment(self, target: Target, params) -> dict:
        key: dict = {"device": [params.host, *params.fleet]}
        if params.host:  # upgrading LiteRT on the device re-benches
            from edgepipe.targets import remote

            key["device_runtime"] = {
                h: remote.runtime_version(_ssh_host(h, params), params.python or target.python)
                for h in dict.fromkeys([params.host, *params.fleet])
            }
        return key

    def measure(
        self,
        target: Target,
        params,
        models: list[Path],
        x: np.ndarray,
        y: np.ndarray,
        *,
        work: Path,
        host_top1: dict[str, np.ndarray],
        out: Path,
    ) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        from edgepipe.targets import remote

        hosts = [_ssh_host(h, params) for h in dict.fromkeys([params.host, *params.fleet])]
        prepared = self._device_files(models, params, out)
        test_set = work / "test.npz"
        np.savez(test_set, x=x, y=y)
        files = [prepared[m.name][0] for m in models]

        def one(host):
            return remote.bench_over_ssh(
                host,
                files,
                test_set,
                python=params.python or target.python,
                threads=params.threads,
                warmup=params.warmup,
                runs=params.runs,
                delegate=target.delegate,
            )

        with ThreadPoolExecutor(min(params.parallel, len(hosts))) as pool:  # a device failing fails the stage
            got_all = list(pool.map(one, hosts))
        first = got_all[0]
        measured: dict = {"_provenance": {**first["provenance"], "host": str(hosts[0])}}
        for m, f in zip(models, files):
            measured[m.name] = {
                **first["models"][f.name],
                **prepared[m.name][1],
                "emulated": first["provenance"].get("emulated"),
            }
        if len(hosts) > 1:
            measured["_fleet"] = {
                str(h): {
                    "provenance": g["provenance"],
                    **{
                        m.name: {**g["models"][f.name], "emulated": g["provenance"].get("emulated")}
                        for m, f in zip(models, files)
                    },
                }
                for h, g in zip(hosts, got_all)
            }
        return measured

    def _device_files(self, models: list[Path], params, out: Path) -> dict[str, tuple[Path, dict]]:
        """Model file name -> (the file the device runs, what preparing it adds to the row): the model itself."""
        return {m.name: (m, {}) for m in models}

    def figures(self, target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray) -> dict:
        out = {k: device[k] for k in ("latency", "predictions_sha256", "peak_rss_bytes", "edgetpu") if k in device}
        dev_one = device["latency"].get("threads_1")
        out["accuracy"] = {"value": device["accuracy"], "provenance": "target"}
        out["latency_p50_us"] = {"value": dev_one and dev_one["p50_us"], "provenance": "target"}
        out["memory"] = {"value": device.get("model_rss_bytes"), "what": "RSS growth", "provenance": "target"}
        if device.get("emulated"):  # an emulator's timings and memory are the emulator's, not the device's
            out["emulated_device"] = device["emulated"]
            out["latency_p50_us"] = {"value": None, "provenance": "target", "not_measured": "emulated"}
            out["memory"] = {"value": None, "what": "RSS growth", "provenance": "target", "not_measured": "emulated"}
        out["same_predictions_as_host"] = device.get("predictions_sha256") == row.get("predictions_sha256")
        return out


class Coral(SshLinux):
    name = "Coral Edge TPU over SSH"
    runtime = EDGE_TPU

    def needs(self, target: Target, params) -> list[Requirement]:
        from edgepipe.targets.edgetpu import INSTALL

        return [command(params.edgetpu_compiler, "the Edge TPU compiler", INSTALL), *super().needs(target, params)]

    def _device_files(self, models: list[Path], params, out: Path) -> dict[str, tuple[Path, dict]]:
        """Each model compiled for the Edge TPU, with the compiler's operation counts."""
        from edgepipe.targets import edgetpu

        folder = out / "edgetpu"  # an output of the bench: what a coral bundle ships
        folder.mkdir(parents=True, exist_ok=True)
        prepared = {}
        for m in models:
            compiled, counts = edgetpu.compile_model(m, folder, params.edgetpu_compiler)
            prepared[m.name] = (compiled, {"edgetpu": counts})
        return prepared

    def bundle_files(
        self, target: Target, out: Path, model: Path, side: dict, ds, *, symbol: str, bench_dirs: list[Path]
    ) -> dict | None:
        """The model compiled for the Edge TPU, as the bench that measured it compiled it, and the compiler's log."""
        for d in bench_dirs:
            compiled = Path(d) / "edgetpu" / f"{model.stem}_edgetpu.tflite"
            if compiled.is_file():
                for f in compiled.parent.glob(f"{model.stem}_edgetpu*"):
                    shutil.copyfile(f, out / f.name)
                return None
        raise EdgepipeError(
            f"bundle: no Edge TPU compilation of {model.name} among the benches given",
            f"give this bundle a bench of target {target.name} as input benches",
        )


def _ssh_host(spec: str, params):
    from edgepipe.targets import remote

    return remote.SshHost.parse(spec, params.identity, tuple(params.ssh_options))


def _answers(spec: str, identity: str | None, options: tuple[str, ...]) -> Requirement:
    """The device at `spec` logs us in over SSH within a few seconds."""
    from edgepipe.targets import remote

    def unmet() -> str | None:
        if shutil.which("ssh") is None:
            return "not asked (no ssh client)"
        try:
            host = remote.SshHost.parse(spec, identity, options)
            done = host.run(["true"], timeout=30)
        except EdgepipeError as e:
            return e.message
        return None if done.returncode == 0 else f"`true` exited {done.returncode} on {spec}"

    return Requirement(
        f"the device {spec} to answer over SSH",
        unmet,
        f"check that `ssh {spec} true` works without a password prompt (ssh-copy-id), and the address",
    )
