"""The configuration of an OpenSSH server of one's own on 127.0.0.1 (the host's sshd, unprivileged).

Two things start such a server with throwaway keys on a free port: the emulated Pi's user variant
(`edgepipe.targets.emulated_pi`), whose device is this machine, and the test harness's `LocalSshd`
(`edgepipe.testing`). Both write this one configuration, so it lives here, below both.
"""

from __future__ import annotations

from pathlib import Path


def sshd_config(root: Path, port: int) -> str:
    """An sshd of its own on 127.0.0.1:port: keys in `root`, public-key login only, no PAM (runs unprivileged)."""
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            f"PidFile {root / 'sshd.pid'}",
            "LogLevel ERROR",
            "",
        ]
    )
