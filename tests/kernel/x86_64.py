"""The x86_64 test machine: QEMU q35 whose two CPUs get ACPI P-states from an SSDT we generate,
so Debian's ``acpi-cpufreq`` registers one real cpufreq policy for both CPUs.

Why these choices: ``intel_pstate`` would take the CPUs (and has no table), so it is disabled;
QEMU's default CPU model says AMD family 0xf, for which acpi-cpufreq refuses ("AMD K8 systems must
use native drivers"), so the vendor string is Intel. The P-state control/status register is an
8-bit SystemIO port in the ISA DMA page-register range (0x8A, 0x8B: one per CPU), which QEMU keeps
as plain storage: acpi-cpufreq's writes there are harmless, and since a SystemIO register cannot
be read as a frequency, the kernel has no ``cpuinfo_cur_freq`` here (``scaling_cur_freq`` is the
last target), one of the real cases the backend must handle.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.kernel import harness
from tests.kernel.guest_image import GuestImage, Share

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# The P-states we declare, highest first as _PSS wants them: (MHz, mW, latency us).
P_STATES_MHZ = [2400, 2000, 1600, 1200, 800]
TRANSITION_LATENCY_US = 10
N_CPUS = 2
MODULES = ["acpi-cpufreq", "cpufreq_userspace", "cpufreq_powersave", "cpufreq_ondemand",
           "cpufreq_conservative"]
TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "iasl": "acpica-tools", "busybox": "busybox-static",
         "cpio": "cpio"}


def ssdt_source(p_states_mhz: list[int] = P_STATES_MHZ, n_cpus: int = N_CPUS) -> str:
    """ASL adding _PCT/_PSS/_PPC/_PSD to QEMU's processor objects ``\\_SB.CPUS.Cnnn``; all CPUs in
    one SW_ALL coordination domain, so the kernel makes one policy for them."""
    pss = ",\n".join(
        f"            Package () {{ {mhz}, {200 + 100 * (len(p_states_mhz) - k)}, {TRANSITION_LATENCY_US}, "
        f"{TRANSITION_LATENCY_US}, {k}, {k} }}"
        for k, mhz in enumerate(p_states_mhz))
    blocks = []
    for cpu in range(n_cpus):
        port = 0x8A + cpu
        blocks.append(f"""
    External (\\_SB.CPUS.C{cpu:03X}, DeviceObj)
    Scope (\\_SB.CPUS.C{cpu:03X})
    {{
        Name (_PCT, Package () {{
            ResourceTemplate () {{ Register (SystemIO, 8, 0, 0x{port:X}) }},
            ResourceTemplate () {{ Register (SystemIO, 8, 0, 0x{port:X}) }}
        }})
        Name (_PSS, Package () {{
{pss}
        }})
        Method (_PPC, 0, NotSerialized) {{ Return (Zero) }}
        Name (_PSD, Package () {{ Package () {{ 5, 0, 0, 0xFC, {n_cpus} }} }})
    }}""")
    return ('DefinitionBlock ("", "SSDT", 2, "DDVFS", "PSTATES", 1)\n{' + "".join(blocks) + "\n}\n")


def build_ssdt(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    dsl = out_dir / "pstates.dsl"
    dsl.write_text(ssdt_source())
    res = harness._run(["iasl", "-p", str(out_dir / "pstates"), str(dsl)], timeout_s=120)
    aml = out_dir / "pstates.aml"
    if res.returncode != 0 or not aml.exists():
        raise harness.KernelTestError(f"iasl could not compile {dsl}: {harness._tail(res.stdout + res.stderr)}")
    return aml


def prepare_x86_64(cache_dir: Path) -> GuestImage:
    """Tools, Debian's amd64 kernel (unpacked, not installed), its modules and our SSDT. The
    chroot is this machine's own ``/`` (read-only), so the venv running pytest runs in the guest."""
    harness.ensure_tools(TOOLS)
    base = cache_dir / "x86_64"
    tree = harness.fetch_kernel("linux-image-amd64", base)
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise harness.KernelTestError(f"no boot/vmlinuz-* in {tree}")
    modules = harness.kernel_modules(tree, harness.SHARE_MODULES + MODULES, base / "modules" / tree.name)
    aml = build_ssdt(base / "acpi")
    # The guest's /tmp is its own tmpfs: a checkout or venv under the host's /tmp is shared again
    # at the same path.
    needed = {PROJECT_ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    shares = [Share(p, str(p)) for p in sorted(needed) if p.is_relative_to("/tmp")]
    return GuestImage(
        arch="x86_64",
        qemu=Path(harness.shutil.which("qemu-system-x86_64")),
        machine_args=["-accel", "tcg", "-M", "q35", "-cpu", "max,vendor=GenuineIntel", "-smp", str(N_CPUS),
                      "-m", "1536", "-acpitable", f"file={aml}"],
        kernel=vmlinuz[-1],
        modules=modules,
        cmdline="intel_pstate=disable",
        root=Path("/"),
        python=sys.executable,
        shares=shares,
    )
