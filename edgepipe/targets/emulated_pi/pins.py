"""Pins: everything a build of the emulated Pi depends on. Changing any of these changes the cache key."""

from __future__ import annotations

#: Bump when the build steps change in a way the other inputs do not show.
BUILDER_VERSION = "2"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

#: Debian packages of the user variant's root file system (extracted, never configured: no emulation).
#: libstdc++6 is needed by the LiteRT wheel and not pulled in by python3.
USER_PACKAGES = ("python3", "libstdc++6")

#: Debian packages of the system variant (installed and configured by mmdebstrap, minbase variant).
#: python3-venv and python3-pip are what a Bookworm user installs to make a venv; ca-certificates lets
#: pip reach PyPI over TLS; sudo, iproute2, procps and netbase are there on any Raspberry Pi OS.
SYSTEM_PACKAGES = (
    "openssh-server",
    "python3",
    "python3-venv",
    "python3-pip",
    "libstdc++6",
    "ca-certificates",
    "netbase",
    "sudo",
    "iproute2",
    "procps",
)

#: Extracted (not installed) for the VM: the kernel and an aarch64 static busybox for the initramfs.
KERNEL_PACKAGES = ("linux-image-arm64", "busybox-static")

#: The kernel modules the initramfs loads (their dependencies are resolved from each .ko's modinfo).
#: crc32c_generic is ext4's soft dependency (metadata checksums).
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "crc32c_generic", "ext4")

#: The aarch64 wheels, pinned with their sha256 (pip checks them: `--require-hashes`). The transitive
#: dependencies of ai-edge-litert 2.3.0 are pinned too, so a build is the same build next month.
WHEELS = {
    "ai-edge-litert==2.3.0": "853fc608f96da87bd5f3458465dfb9abbf18d5ae6b94eceacead407146f175ae",
    "numpy==2.4.6": "0ab0a9c4ffb1a6d95ef519fe4247dba8eb6b18ad93999f76b7f657039acabd47",
    "backports.strenum==1.2.8": "fc297cb26971f7d5e15a478a06a78575197f81daea47975771b1aae996dcccf4",
    "flatbuffers==25.12.19": "7634f50c427838bb021c2d66a3d1168e9d199b0607e6329399f04846d42e20b4",
    "ml_dtypes==0.7.0": "7c094b42cb01f21e37e602a5cfe502ddaf6b5c60f66a162fd1e61f9a586558cb",
    "protobuf==7.36.2": "e11e1f0180583a2af89db6a2ecd9e8dc40aa6d2988ca175bfd0e6d12ea72d74e",
    "tqdm==4.70.1": "c293e525e6fef9c20e8728fd4612df02a0aa31bb5fe91ecd93e123b1b7bffa73",
    "typing_extensions==4.16.0": "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8",
}

#: Platform tags for `pip download`. The 2.x LiteRT wheels are manylinux_2_27_aarch64, which pip does not
#: infer from the others; bookworm's glibc is 2.36, so any tag up to 2_36 would run.
WHEEL_PLATFORMS = (
    "manylinux_2_27_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux2014_aarch64",
    "manylinux_2_17_aarch64",
)
WHEEL_PYTHON = "311"  # bookworm's CPython 3.11

#: Where the system variant's build-time venv lives on the device (the EmulatedPiVM's `python`).
VM_VENV = "/opt/edgepipe-litert"
VM_USER = "pi"
VM_UID = 1000
VM_HOSTNAME = "raspberrypi"
#: Size of the (sparse) root ext4 image: room for a user's own venv and pip's cache.
VM_IMAGE_BYTES = 4 * 1024**3
