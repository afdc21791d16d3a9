"""`python -m edgepipe.targets.emulated_pi`: start an emulated Pi and keep it up until Ctrl-C."""

from __future__ import annotations

import sys
import time

from edgepipe.targets.emulated_pi import EmulatedPi, EmulatedPiVM, missing_tools


def main(argv: list[str] | None = None) -> int:
    """`python -m edgepipe.targets.emulated_pi [--system]`: start an emulated Pi, print how to reach it and
    bench on it, and keep it up until Ctrl-C (to try the device set-up of docs/targets.md without a Pi)."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="python -m edgepipe.targets.emulated_pi", description=main.__doc__)
    ap.add_argument(
        "--system",
        action="store_true",
        help="a whole arm64 VM (its own kernel and sshd, Bookworm's "
        "PEP 668 Python) instead of qemu-user behind this machine's sshd; building its image the "
        "first time enables aarch64 binfmt_misc machine-wide (as root)",
    )
    ap.add_argument("--cpu", default="cortex-a72", help="the emulated core: cortex-a72 (Pi 4), cortex-a76 (Pi 5)")
    ap.add_argument(
        "--internet",
        action="store_true",
        help="system variant: let the VM reach the network (to pip install from PyPI in it)",
    )
    args = ap.parse_args(argv)
    missing = missing_tools("system" if args.system else "user")
    if missing:
        print(
            f"edgepipe: error: missing host tools: {', '.join(missing)}; fix: apt-get install qemu-user-static "
            "qemu-system-arm mmdebstrap arch-test binfmt-support e2fsprogs openssh-server",
            file=sys.stderr,
        )
        return 1
    # --system is the user asking for the whole VM: building its image may enable aarch64 binfmt_misc
    # machine-wide, and a progress line says so when it does
    device = EmulatedPiVM(args.cpu, internet=args.internet, setup_binfmt=True) if args.system else EmulatedPi(args.cpu)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops qemu and removes the keys too
    with device:
        opts = " ".join(f"-o {o}" for o in device.ssh_options)
        login = device.host.rsplit(":", 1)[0]
        print(
            f"\n{device.description}\n  ssh -i {device.identity} {opts} -p {device.port} {login}\n"
            f"  bench with: --host {device.host} --set bench.identity={device.identity} "
            f"--set 'bench.ssh_options=[{', '.join(device.ssh_options)}]' --set bench.python={device.python}\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        try:
            while device.proc is None or device.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
