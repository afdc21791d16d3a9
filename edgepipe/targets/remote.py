"""Running the device runner on another machine over SSH (a Raspberry Pi, a Coral dev board, any Linux box).

The OpenSSH client does the transport (`ssh`, `scp`), with the user's own keys, agent and
`~/.ssh/config`, so whatever `ssh user@host` reaches, edgepipe reaches. Every command is an argument
list; the remote command line is built with `shlex.join`, so nothing from a recipe or a file name is ever
interpreted by a shell. Files go to a fresh `mktemp -d` directory on the device, removed afterwards even
when the run fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
import subprocess
from pathlib import Path

from edgepipe.core.errors import EdgepipeError, RecipeError

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("device_runner.py")
HOST = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$"
)


def check_addresses(params, where: str, from_cli: bool = False) -> None:
    """Refuse a malformed SSH address of a stage (its host, each of its fleet) when the recipe is loaded,
    naming the param it came from (or --host), not after the stages before it have run."""
    given = [("--host" if from_cli else f"{where}.host", params.host)] if params.host else []
    given += [(f"{where}.fleet[{i}]", a) for i, a in enumerate(getattr(params, "fleet", None) or [])]
    for what, address in given:
        if not isinstance(address, str) or not HOST.match(address):
            raise RecipeError(f"{what}: {address!r} is not user@address[:port]", "write it as e.g. pi@192.168.1.20")


@dataclasses.dataclass(frozen=True)
class SshHost:
    """Where to reach a device: `user@host[:port]`, an optional identity file and extra `-o` options."""

    user: str | None
    host: str
    port: int | None = None
    identity: Path | None = None
    options: tuple[str, ...] = ()
    connect_timeout: int = 10

    @classmethod
    def parse(cls, spec: str, identity: str | Path | None = None, options: tuple[str, ...] = ()) -> "SshHost":
        m = HOST.match(spec or "")
        if not m:
            raise EdgepipeError(f"--host {spec!r}: not user@host[:port]", "e.g. --host pi@192.168.1.20")
        port = int(m["port"]) if m["port"] else None
        return cls(m["user"], m["host"].strip("[]"), port, Path(identity) if identity else None, tuple(options))

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return self.dest + (f":{self.port}" if self.port else "")

    def _common(self, port_flag: str) -> list[str]:
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.port:
            args += [port_flag, str(self.port)]
        if self.identity:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        for o in self.options:
            args += ["-o", o]
        return args

    def run(self, argv: list[str], timeout: float = 3600) -> subprocess.CompletedProcess:
        """Run `argv` on the device (quoted for its shell), capturing output; SSH failures raise one line."""
        cmd = ["ssh", *self._common("-p"), self.dest, "--", shlex.join(argv)]
        log.info("ssh: %s", cmd)
        return self._check(
            subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        )

    def copy_to(self, files: list[Path], remote_dir: str, timeout: float = 600) -> None:
        """Copy local files into an existing remote directory."""
        cmd = ["scp", "-q", *self._common("-P"), *[str(f) for f in files], f"{self.dest}:{remote_dir}/"]
        log.info("scp: %s", cmd)
        done = self._check(
            subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        )
        if done.returncode != 0:
            raise EdgepipeError(
                f"{self}: copying files failed ({_first_line(done.stderr)})", "check free space in the device's /tmp"
            )

    def _check(self, done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        """Turn ssh's own failures (exit 255) into one line; the remote command's exit code passes through."""
        if done.returncode != 255:
            return done
        err = done.stderr
        if "Permission denied" in err or "Too many authentication failures" in err:
            raise EdgepipeError(
                f"{self}: SSH authentication failed ({_first_line(err)})",
                f"check that `ssh {self.dest}` logs in without a password (ssh-copy-id), "
                "or name the key file in the bench param identity",
            )
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            raise EdgepipeError(
                f"{self}: host key verification failed",
                f"connect once with `ssh {self.dest}` to accept its key, or fix ~/.ssh/known_hosts",
            )
        raise EdgepipeError(
            f"{self}: device unreachable ({_first_line(err) or 'ssh exited 255'})",
            "check the address, that the device is on and that sshd runs on it",
        )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip() and not line.startswith("Warning:")]
    return lines[-1][:200] if lines else ""


def bench_over_ssh(
    host: SshHost,
    models: list[Path],
    test_set: Path,
    *,
    python: str = "python3",
    threads: list[int],
    warmup: int,
    runs: int,
    delegate: str | None = None,
) -> dict:
    """Copy the runner, the models and the test set to the device, run each model there, collect the JSON.

    Each model runs in its own process on the device, so its memory figure is its own. The remote
    temporary directory is removed in every case.

    Returns:
        {"provenance": {...device...}, "models": {file name: measured row}}
    """
    python = expand_home(host, python)
    made = host.run(["mktemp", "-d", "/tmp/edgepipe.XXXXXXXX"], timeout=60)
    remote_dir = made.stdout.strip()
    if made.returncode != 0 or not remote_dir.startswith("/tmp/edgepipe."):
        raise EdgepipeError(
            f"{host}: cannot make a temporary directory ({_first_line(made.stderr)})",
            "check that the device's /tmp is writable",
        )
    try:
        host.copy_to([RUNNER, test_set, *models], remote_dir)
        out: dict = {"models": {}}
        for model in models:
            argv = [
                python,
                f"{remote_dir}/{RUNNER.name}",
                f"{remote_dir}/{model.name}",
                "--data",
                f"{remote_dir}/{test_set.name}",
                "--warmup",
                str(warmup),
                "--runs",
                str(runs),
                "--threads",
                *[str(t) for t in threads],
            ]
            if delegate:
                argv += ["--delegate", delegate]
            done = host.run(argv)
            result = _parse(done, host, python)
            out["provenance"] = result["provenance"]
            row = result["models"][model.name]
            row["peak_rss_bytes"] = result["peak_rss_bytes"]
            out["models"][model.name] = row
        return out
    finally:
        cleaned = host.run(["rm", "-rf", "--", remote_dir], timeout=60)
        if cleaned.returncode != 0:
            log.warning("%s: could not remove %s: %s", host, remote_dir, cleaned.stderr.strip())


def expand_home(host: SshHost, python: str) -> str:
    """`~/litert/bin/python` with the device's home folder: the remote command line is quoted, so the
    device's shell would not expand `~` itself."""
    if not python.startswith("~/"):
        return python
    home = host.run(["printenv", "HOME"], timeout=60).stdout.strip()
    return f"{home}/{python[2:]}" if home.startswith("/") else python


def runtime_version(host: SshHost, python: str) -> str:
    """The LiteRT runtime's version on the device (part of a bench's cache key: an upgrade re-benches), or
    why it could not be read."""
    script = (
        "import importlib.metadata as m\nfor d in ('ai-edge-litert', 'tflite-runtime'):\n try: print(d, "
        "m.version(d)); break\n except Exception: pass\nelse: print('none')"
    )
    try:
        done = host.run([expand_home(host, python), "-c", script], timeout=120)
    except (EdgepipeError, subprocess.TimeoutExpired) as e:
        return f"unreachable ({e})"[:200]
    return done.stdout.strip() or f"unknown (exit {done.returncode})"


def _parse(done: subprocess.CompletedProcess, host: SshHost, python: str) -> dict:
    if done.returncode == 127:
        raise EdgepipeError(
            f"{host}: {python} not found on the device",
            "install Python 3 there, or name its interpreter in the bench param python",
        )
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        result = None
    if isinstance(result, dict) and "error" in result:
        raise EdgepipeError(f"{host}: {result['error']}", result.get("fix"))
    if done.returncode != 0 or not isinstance(result, dict):
        raise EdgepipeError(
            f"{host}: the device runner failed with exit {done.returncode} ({_first_line(done.stderr) or 'no output'})",
            "run it by hand on the device to see why (edgepipe/targets/device_runner.py --help)",
        )
    return result
