"""Tiny, real inputs for tests: IDX files, PNG folders and recipes small enough to run in seconds.

The images are learnable (each class is a bright square at its own place), so a one-conv model reaches
high accuracy in a few epochs and tests can check learning actually happened.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import yaml

from edgepipe.targets.local_sshd import sshd_config


def synthetic_images(n: int, num_classes: int = 4, size: int = 12, channels: int = 1, seed: int = 0):
    """`n` uint8 images (N, size, size, channels) and labels: class c lights up its own patch."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = rng.integers(0, 40, (n, size, size, channels)).astype(np.uint8)
    cells = int(np.ceil(np.sqrt(num_classes)))
    step = size // cells
    for i, c in enumerate(y):
        r, k = divmod(int(c), cells)
        x[i, r * step : (r + 1) * step, k * step : (k + 1) * step, :] = rng.integers(180, 255)
    return x, y.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write an unsigned-byte IDX file (MNIST format), gzipped when `gz`."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_dataset(
    root: Path,
    n_train: int = 120,
    n_test: int = 40,
    num_classes: int = 4,
    size: int = 12,
    gz: bool = True,
    seed: int = 1,
) -> Path:
    """A complete MNIST-format dataset folder of synthetic images."""
    x, y = synthetic_images(n_train + n_test, num_classes, size, seed=seed)
    write_idx(root / "train-images-idx3-ubyte", x[:n_train, ..., 0], gz)
    write_idx(root / "train-labels-idx1-ubyte", y[:n_train], gz)
    write_idx(root / "t10k-images-idx3-ubyte", x[n_train:, ..., 0], gz)
    write_idx(root / "t10k-labels-idx1-ubyte", y[n_train:], gz)
    return root


def write_png_folder(
    root: Path,
    per_class: int = 20,
    classes=("circle", "square", "stripe"),
    size: int = 16,
    rgb: bool = True,
    ext: str = ".png",
    seed: int = 2,
) -> Path:
    """A `folder:` dataset of real image files (PNG, or JPEG with ext=".jpg"), one sub-folder per class."""
    from PIL import Image

    x, y = synthetic_images(per_class * len(classes), len(classes), size, 3 if rgb else 1, seed=seed)
    for i, (img, c) in enumerate(zip(x, y)):
        d = root / classes[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img if rgb else img[..., 0]).save(d / f"{i:04d}{ext}", quality=95)
    return root


def write_recipe(path: Path, recipe: dict) -> Path:
    """Dump a recipe mapping to YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def tiny_recipe(data_dir: Path, epochs: int = 2, arch: str = "tiny_conv") -> dict:
    """data -> train on an IDX folder, in seconds."""
    return {
        "stages": {
            "data": {"kind": "data", "params": {"source": f"idx:{data_dir}", "val_fraction": 0.2}},
            "model": {
                "kind": "train",
                "inputs": {"data": "data"},
                "params": {
                    "arch": arch,
                    "epochs": epochs,
                    "batch_size": 16,
                    "lr": 0.01,
                    "schedule": {"kind": "constant"},
                    "tensorboard": False,
                    "early_stopping": {"enabled": False},
                },
            },
        }
    }


def converted_project(root: Path, *, report: bool = False) -> Path:
    """`root/tiny.yaml` (data -> tiny_conv -> float32 + int8 -> bench [-> report]) run by the `edgepipe`
    command up to the conversion, so that a test benches it on a target of its choice; returns `root`."""
    import subprocess
    import sys

    recipe = tiny_recipe(write_idx_dataset(root / "idx", n_train=160, n_test=60), epochs=4)
    recipe["stages"]["tflite"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {
            "variants": ["float32", "int8"],
            "representative_samples": 50,
            "parity_samples": 30,
            "tolerance": {"int8_top1": 0.9},
        },
    }
    recipe["stages"]["bench"] = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {"warmup": 2, "runs": 20, "threads": [1]},
    }
    if report:
        recipe["stages"]["report"] = {"kind": "report", "inputs": {"benches": ["bench"]}}
    write_recipe(root / "tiny.yaml", recipe)
    exe = Path(sys.executable).with_name("edgepipe")
    done = subprocess.run(
        [str(exe), "run", "tiny.yaml", "--until", "tflite"], cwd=root, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"the tiny project did not convert: {done.stderr[-2000:]}")
    return root


def write_tfds_dataset(data_dir: Path, name: str = "tiny_shapes", n_train: int = 60, n_test: int = 20) -> Path:
    """A prepared TensorFlow Datasets dataset, written by tfds itself into `data_dir/<name>/1.0.0`."""
    from edgepipe.core._tf import tf  # noqa: I001 - first: TensorFlow's import noise silenced

    import tensorflow_datasets as tfds

    x, y = synthetic_images(n_train + n_test, 4, 12, seed=3)

    def split(a, b):
        return tf.data.Dataset.from_tensor_slices({"image": x[a:b], "label": y[a:b].astype("int64")})

    builder = tfds.dataset_builders.TfDataBuilder(
        name=name,
        version="1.0.0",
        data_dir=str(data_dir),
        split_datasets={"train": split(0, n_train), "test": split(n_train, n_train + n_test)},
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(12, 12, 1)),
                "label": tfds.features.ClassLabel(names=["nw", "ne", "sw", "se"]),
            }
        ),
    )
    builder.download_and_prepare()
    return Path(data_dir)


class LocalSshd:
    """A real OpenSSH server on 127.0.0.1 for tests: a free port, a throwaway host key and client key.

    Use as a context manager; `host` is `user@127.0.0.1:port`, `identity` the client's private key and
    `ssh_options` the `-o` options that make the client trust exactly this server's key.
    """

    SSHD = "/usr/sbin/sshd"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.proc = None

    @classmethod
    def available(cls) -> bool:
        import shutil

        return Path(cls.SSHD).is_file() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None

    def __enter__(self) -> "LocalSshd":
        import getpass
        import os
        import socket
        import subprocess
        import time

        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(r / key)], check=True)
        (r / "authorized_keys").write_text((r / "client_key.pub").read_text())
        os.chmod(r / "authorized_keys", 0o600)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (r / "sshd_config").write_text(sshd_config(r, self.port))
        host_pub = (r / "host_key.pub").read_text().split()
        (r / "known_hosts").write_text(
            f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n"
            f"[localhost]:{self.port} {host_pub[0]} {host_pub[1]}\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on as root
        self.proc = subprocess.Popen(
            [self.SSHD, "-D", "-e", "-f", str(r / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(r / "sshd.log", "w"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(r / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
        self.user = getpass.getuser()
        self.host = f"{self.user}@127.0.0.1:{self.port}"
        self.other_name = f"{self.user}@localhost:{self.port}"  # the same server under a second name (a fleet)
        self.identity = r / "client_key"
        self.ssh_options = [f"UserKnownHostsFile={r / 'known_hosts'}", "StrictHostKeyChecking=yes"]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# Training knobs that make a test's stage quick and its result depend only on its own arguments.
FAST = {"batch_size": 16, "tensorboard": False, "early_stopping": {"enabled": False}, "schedule": {"kind": "constant"}}


def run_stage(root: Path, name: str, fn, cls, params: dict, **inputs) -> Path:
    """Run stage function `fn` with `params` (validated as `cls`) into `root/name`, the way the runner
    would hand it its inputs; returns the output folder."""
    from edgepipe.core.params import build
    from edgepipe.core.stage import StageIO

    out, work = root / name, root / f".{name}.work"
    out.mkdir()
    work.mkdir(exist_ok=True)
    fn(build(cls, params, name), StageIO(inputs=inputs, out=out, work=work))
    return out


def run_cli(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run the `edgepipe` command in this process (as its console script would) in `cwd`: (exit code,
    stdout, stderr). Much faster than a subprocess, so property tests can try many inputs."""
    import contextlib
    import io
    import os
    import signal
    import sys

    from edgepipe.cli import entry

    out, err = io.StringIO(), io.StringIO()
    argv, old_cwd, handler = sys.argv, os.getcwd(), signal.getsignal(signal.SIGTERM)
    sys.argv = ["edgepipe", *map(str, args)]
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(old_cwd)
        signal.signal(signal.SIGTERM, handler)
    return code, out.getvalue(), err.getvalue()


def check_clean_outcome(code: int, stderr: str, root: Path) -> str | None:
    """The guarantee for any input: success, or exactly one `edgepipe: error: <what>; fix: <how>` line with
    exit 1 or 2, no traceback, no internal error, and nothing half-written under `root/runs` (no
    leftovers in .tmp, no output folder of a stage the lock file does not record). Returns the line."""
    import json

    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 0:
        assert not [line for line in lines if line.startswith("edgepipe: error")], stderr
        line = None
    else:
        assert code in (1, 2), f"exit {code}: {stderr}"
        assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr}"
        line = lines[0]
        assert line.startswith("edgepipe: error: ") and "; fix: " in line, line
        assert "internal error" not in line and "Traceback" not in stderr, line
    runs = Path(root) / "runs"
    for run in runs.iterdir() if runs.is_dir() else []:
        tmp = run / ".tmp"
        assert not tmp.exists() or not any(tmp.iterdir()), f"left in {tmp}: {list(tmp.iterdir())}"
        lock = json.loads((run / "lock.json").read_text()) if (run / "lock.json").is_file() else {"stages": {}}
        stages = {d.name for d in run.iterdir() if d.is_dir() and not d.name.startswith(".")}
        assert stages <= set(lock["stages"]), f"output of an unfinished stage: {stages - set(lock['stages'])}"
    return line


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` -> (size, mtime_ns): a snapshot to tell what a command wrote."""
    out = {}
    for p in Path(root).rglob("*"):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out
