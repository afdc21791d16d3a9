"""What both emulated Pis share: throwaway SSH keys, a free port, the device as an SSH endpoint, and its
life: a work folder, one process started in it, and stopping both whether the start succeeded or not."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from pathlib import Path
from typing import IO


def keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_known_hosts(path: Path, port: int, host_pub: Path) -> None:
    kind, key = host_pub.read_text().split()[:2]
    path.write_text(f"[127.0.0.1]:{port} {kind} {key}\n[localhost]:{port} {kind} {key}\n")


class SshDevice:
    """What both emulated devices expose: where to ssh, with which key and options, which python.

    A subclass builds its device in `_prepare` and starts its one process (sshd, qemu) in `_start`; the
    context manager gives either a work folder (a temporary one unless `workdir` was given) and, when
    the start fails or the block ends, stops the process (terminate, then kill after `stop_timeout`
    seconds), closes its log and removes a temporary work folder.
    """

    host: str
    identity: Path
    ssh_options: list[str]
    python: str
    description: str
    port: int
    user: str
    workdir: Path
    proc: subprocess.Popen | None = None
    stop_timeout: float = 10
    _workdir_arg: str | Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = None
    _log: IO[str] | None = None
    _prefix = "edgepipe-pi-"  # of a temporary work folder

    def _prepare(self) -> None:
        """Build (or find in the cache) what the device runs, before any process starts."""

    def _start(self, workdir: Path) -> None:
        """Start the device in `workdir` and return once it answers."""
        raise NotImplementedError

    def __enter__(self):
        self._prepare()
        if self._workdir_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=self._prefix)
            self.workdir = Path(self._tmp.name)
        else:
            self.workdir = Path(self._workdir_arg)
            self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(self.workdir)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _keys(self, r: Path, name: str, port: int, user: str) -> None:
        """This instance's SSH host and client keys in `r`, and how the client reaches exactly this server."""
        keygen(r / "host_key", f"{name}-host")
        keygen(r / "client_key", f"{name}-client")
        write_known_hosts(r / "known_hosts", port, r / "host_key.pub")
        self.port, self.user = port, user
        self.host = f"{user}@127.0.0.1:{port}"
        self.identity = r / "client_key"
        self.ssh_options = [f"UserKnownHostsFile={r / 'known_hosts'}", "StrictHostKeyChecking=yes"]

    def ssh_host(self):
        """This device as edgepipe's own `SshHost`."""
        from edgepipe.targets.remote import SshHost

        return SshHost.parse(self.host, identity=self.identity, options=tuple(self.ssh_options))

    def ssh_command(self, remote: str) -> list[str]:
        """An `ssh` argument list that runs the shell command line `remote` on the device."""
        args = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.port),
            "-i",
            str(self.identity),
            "-o",
            "IdentitiesOnly=yes",
        ]
        for o in self.ssh_options:
            args += ["-o", o]
        return [*args, f"{self.user}@127.0.0.1", "--", remote]

    def run(self, remote: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        """Run a shell command line on the device, capturing its output (text)."""
        return subprocess.run(
            self.ssh_command(remote), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
