"""What both emulated Pis share: throwaway SSH keys, a free port, and the device as an SSH endpoint."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


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
    """What both emulated devices expose: where to ssh, with which key and options, which python."""

    host: str
    identity: Path
    ssh_options: list[str]
    python: str
    description: str
    port: int
    user: str

    def ssh_host(self):
        """This device as edgepipe's own `SshHost`."""
        from edgepipe.targets.remote import SshHost

        return SshHost.parse(self.host, identity=self.identity, options=tuple(self.ssh_options))

    def ssh_command(self, remote: str) -> list[str]:
        """An `ssh` argument list that runs the shell command line `remote` on the device."""
        args = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(self.port), "-i",
                str(self.identity), "-o", "IdentitiesOnly=yes"]
        for o in self.ssh_options:
            args += ["-o", o]
        return [*args, f"{self.user}@127.0.0.1", "--", remote]

    def run(self, remote: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        """Run a shell command line on the device, capturing its output (text)."""
        return subprocess.run(self.ssh_command(remote), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
