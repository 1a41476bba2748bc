"""What it takes to boot one real-kernel test guest: the contract between the machine recipes
(x86_64 with acpi-cpufreq, arm64 ``virt`` with cpufreq-dt and an imx-bus devfreq device) and the
harness that boots them under QEMU (TCG) and runs our code inside against the guest's real /sys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Share:
    """A host directory exported over 9p (virtio) and mounted inside the guest's chroot."""

    host_path: Path
    guest_path: str  # absolute path inside the chroot
    readonly: bool = True


@dataclass(frozen=True)
class GuestImage:
    arch: Literal["x86_64", "arm64"]
    qemu: Path  # qemu-system-x86_64 / qemu-system-aarch64
    machine_args: list[str]  # -M/-cpu/-smp/-m/-acpitable/-dtb ...: not -kernel/-initrd/-append/-virtfs
    kernel: Path  # vmlinuz (x86_64) or Image (arm64), unpacked from Debian's package
    modules: list[Path]  # .ko files (decompressed), insmod'ed in this order by the initramfs
    cmdline: str  # kernel arguments besides console=/rdinit=
    root: Path  # host directory shared read-only as the chroot's / (host / for x86_64)
    python: str  # the interpreter inside the chroot
    env: dict[str, str] = field(default_factory=dict)  # environment inside the chroot
    shares: list[Share] = field(default_factory=list)  # further shares, e.g. the project checkout
    busybox: Path | None = None  # static busybox for the initramfs, of the guest's arch (None: the host's)
