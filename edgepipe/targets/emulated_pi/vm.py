"""The system variant as a device: qemu-system-aarch64 booting the image, its own sshd behind a port forward."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from edgepipe.targets.emulated_pi.build import build_device
from edgepipe.targets.emulated_pi.build_cache import cache_root, read_manifest
from edgepipe.targets.emulated_pi.cpus import cpu_model
from edgepipe.targets.emulated_pi.initramfs import instance_cpio
from edgepipe.targets.emulated_pi.pins import SUITE, VM_USER, VM_VENV
from edgepipe.targets.emulated_pi.ssh import SshDevice, free_port
from edgepipe.targets.emulated_pi.system_image import system_name
from edgepipe.targets.emulated_pi.tools import QEMU_SYSTEM, BuildError, Progress, missing_tools, show_progress


def vm_command(
    device: Path,
    *,
    cpu: str = "cortex-a72",
    smp: int = 2,
    memory: str = "2G",
    port: int,
    initrd: Path,
    console: Path,
    internet: bool = True,
    qemu: str = QEMU_SYSTEM,
) -> list[str]:
    """The qemu-system-aarch64 command line of an EmulatedPiVM.

    `-snapshot`: the cached root image is never written (a boot's changes go to a temporary file and are
    gone when qemu exits). `internet=False` sets slirp's `restrict=on`: the guest reaches nothing
    outside; only the SSH port forward works.
    """
    cpu_model(cpu)
    net = f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22" + ("" if internet else ",restrict=on")
    return [
        qemu,
        "-M",
        "virt",
        "-cpu",
        cpu,
        "-smp",
        str(smp),
        "-m",
        memory,
        "-accel",
        "tcg,thread=multi",
        "-kernel",
        str(device / "vmlinuz"),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyAMA0 quiet panic=-1",
        "-drive",
        f"if=none,id=root,format=raw,cache=unsafe,file={device / 'root.ext4'}",
        "-device",
        "virtio-blk-pci,drive=root",
        "-netdev",
        net,
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
        "-device",
        "virtio-rng-pci",
        "-snapshot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",
        "-no-reboot",
    ]


class EmulatedPiVM(SshDevice):
    """The system variant as a device: a booted arm64 Debian VM whose own sshd is on 127.0.0.1:port.

        with EmulatedPiVM() as pi:  # boots (tens of seconds), waits for its sshd
            bench_over_ssh(pi.ssh_host(), models, test_set, python=pi.python, threads=[1], warmup=2, runs=10)

    Same attributes as EmulatedPi (user `pi`, python = the build-time venv's python), plus boot_seconds
    and console (the serial console log). Each boot has its own SSH host key and client key; the cached
    image is never changed. Building the image the first time needs aarch64 binfmt_misc: pass
    `setup_binfmt=True` to have it enabled machine-wide (see `build_device`).
    """

    stop_timeout = 20
    _prefix = "edgepipe-pivm-"

    def __init__(
        self,
        cpu: str = "cortex-a72",
        *,
        smp: int = 2,
        memory: str = "2G",
        cache_dir: str | Path | None = None,
        workdir: str | Path | None = None,
        progress: Progress = print,
        internet: bool = False,
        boot_timeout: float = 600,
        setup_binfmt: bool = False,
    ):
        cpu_model(cpu)
        self.cpu, self.smp, self.memory, self.cache_dir, self.progress = cpu, smp, memory, cache_dir, progress
        self.internet, self.boot_timeout, self.setup_binfmt = internet, boot_timeout, setup_binfmt
        self._workdir_arg = workdir

    @staticmethod
    def available(cache_dir: str | Path | None = None) -> str | None:
        """None if this machine can boot an EmulatedPiVM (or its image is cached), else why not."""
        missing = missing_tools("system")
        if missing:
            return f"missing {', '.join(missing)}"
        cached = (cache_root(cache_dir) / system_name() / "manifest.json").is_file()
        if not cached and os.geteuid() != 0:
            return "the system image is not cached and building it needs root"
        return None

    def _prepare(self) -> None:
        self.device = build_device(
            self.cache_dir, cpu=self.cpu, variant="system", progress=self.progress, setup_binfmt=self.setup_binfmt
        )
        m = read_manifest(self.device)
        pyver = (m.get("python_deb") or "3.11").split("-")[0]
        self.python = f"{VM_VENV}/bin/python"
        self.description = (
            f"qemu-system virt {self.cpu} x{self.smp}, {self.memory}, Debian {SUITE} arm64 "
            f"(kernel {m['kernel_release']}), Python {pyver}"
        )

    def _start(self, r: Path) -> None:
        """Boot the image with this instance's keys in its initramfs; return once its sshd lets us in."""
        self._keys(r, "edgepipe-pivm", free_port(), VM_USER)
        initrd = r / "initrd.cpio"
        initrd.write_bytes(
            (self.device / "initrd.cpio").read_bytes()
            + instance_cpio(r / "host_key", (r / "client_key.pub").read_bytes())
        )
        self.console = r / "console.log"
        cmd = vm_command(
            self.device,
            cpu=self.cpu,
            smp=self.smp,
            memory=self.memory,
            port=self.port,
            initrd=initrd,
            console=self.console,
            internet=self.internet,
        )
        show_progress(self.progress, f"pi: booting {self.description} (ssh on 127.0.0.1:{self.port})")
        start = time.monotonic()
        self._log = open(r / "qemu.log", "w")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(r)},
        )  # -snapshot's overlay lives here
        while True:
            if self.proc.poll() is not None:
                raise BuildError(
                    f"qemu exited ({self.proc.returncode}) before sshd answered: "
                    f"{self._tail(r / 'qemu.log')} / console: {self._tail(self.console)}"
                )
            if time.monotonic() - start > self.boot_timeout:
                raise BuildError(f"no sshd after {self.boot_timeout:.0f} s; console: {self._tail(self.console)}")
            if self._banner() and self.run("true", timeout=60).returncode == 0:
                break
            time.sleep(1)
        self.boot_seconds = round(time.monotonic() - start, 1)
        show_progress(self.progress, f"pi: booted to sshd in {self.boot_seconds:.1f} s")

    @staticmethod
    def _tail(path: Path, n: int = 600) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-6:])[-n:]
        return ""

    def _banner(self) -> bool:
        """Whether the guest's sshd answers (qemu accepts the forwarded port before the guest listens)."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
            s.settimeout(5)
            return s.recv(8).startswith(b"SSH-")
        return False
