"""The user variant as a device: this machine's sshd on 127.0.0.1, and the emulated arm64 python."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

from edgepipe.targets.emulated_pi.build import build_device
from edgepipe.targets.emulated_pi.build_cache import read_manifest
from edgepipe.targets.emulated_pi.pins import SUITE
from edgepipe.targets.emulated_pi.ssh import SshDevice, free_port
from edgepipe.targets.emulated_pi.tools import SSHD, BuildError, Progress, missing_tools
from edgepipe.targets.local_sshd import sshd_config


class EmulatedPi(SshDevice):
    """The user variant as a device: the host's sshd on 127.0.0.1 (throwaway keys) + the emulated python.

        with EmulatedPi(cpu="cortex-a72") as pi:
            bench_over_ssh(pi.ssh_host(), models, test_set, python=pi.python, threads=[1], warmup=2, runs=10)

    Attributes (after __enter__): host (`user@127.0.0.1:port`), identity (the client's private key),
    ssh_options (`-o` options that make the client trust exactly this server), python (the wrapper path:
    the bench param `python`), description, device (the cache entry), port, user, workdir.
    """

    def __init__(
        self,
        cpu: str = "cortex-a72",
        *,
        cache_dir: str | Path | None = None,
        workdir: str | Path | None = None,
        progress: Progress = print,
        cores: int = 4,
    ):
        self.cpu, self.cache_dir, self.progress, self.cores = cpu, cache_dir, progress, cores
        self._workdir_arg = workdir

    @staticmethod
    def available() -> str | None:
        """None if this machine can run an EmulatedPi, else why not (for pytest.skip)."""
        missing = missing_tools("user")
        return f"missing {', '.join(missing)}" if missing else None

    def _prepare(self) -> None:
        self.device = build_device(
            self.cache_dir, cpu=self.cpu, variant="user", progress=self.progress, cores=self.cores
        )
        m = read_manifest(self.device)
        self.python = str(self.device / "python")
        self.description = (
            f"qemu-user {self.cpu}, Debian {SUITE} arm64, Python {m['smoke']['python']} "
            f"(ai-edge-litert {m['smoke']['ai_edge_litert']}, numpy {m['smoke']['numpy']})"
        )

    def _start(self, r: Path) -> None:
        """This machine's sshd on a free port, trusting this instance's client key alone."""
        self._keys(r, "edgepipe-pi", free_port(), getpass.getuser())
        (r / "authorized_keys").write_text((r / "client_key.pub").read_text())
        os.chmod(r / "authorized_keys", 0o600)
        (r / "sshd_config").write_text(sshd_config(r, self.port))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory, as root
        self._log = open(r / "sshd.log", "w")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(r / "sshd_config")], stdout=subprocess.DEVNULL, stderr=self._log
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BuildError(f"sshd did not start: {(r / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
