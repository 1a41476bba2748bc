"""The arm64 real-kernel guest: QEMU ``virt`` (TCG) running Debian 12's arm64 kernel, with
``cpufreq-dt`` driving the CPUs and the generic ``imx-bus`` devfreq driver driving a node we declare,
so that both the cpufreq and the devfreq paths of the Linux backend meet a real kernel core.

Why these pieces:

* QEMU's ``virt`` board has no clocks a DVFS driver could drive, so we dump QEMU's own device tree
  and add them: fixed clocks feeding ``gpio-mux-clock``s whose select lines are lines of QEMU's
  PL061 GPIO (QEMU keeps them as plain storage, so switching is harmless). A two-parent mux can only
  run its two parents: the lowest and highest OPP. Middle OPPs are accepted as targets while the
  clock stays at the lower parent; that is a real condition (a clock that cannot reach an OPP) which
  the backend must report truthfully, so the tables keep middle OPPs on purpose.
* ``cpufreq-dt`` (a module) binds the CPUs through an ``operating-points-v2`` table shared by both
  CPUs (one policy); its ``cpuinfo_cur_freq`` is read from the clock, i.e. the hardware's reading.
* ``imx-bus`` binds any ``fsl,imx8m-nic`` node with a clock and an OPP table and registers a devfreq
  device whose boot governor is ``userspace`` (so ``governor_userspace`` must be loaded first): a
  real devfreq core with ``userspace`` and ``simple_ondemand``, standing in for a GPU.
* The guest cannot run the host's x86_64 Python, so the chroot is an arm64 root we assemble from
  Debian's own ``python3.11`` packages and aarch64 wheels of the same versions the host runs, with
  bytecode compiled ahead (the root is read-only in the guest and each Python start under TCG
  already costs tens of seconds).

Everything is downloaded with the ordinary clients (``apt-get`` with arm64 options and a private
list/cache directory, never touching the host's dpkg architectures; ``pip download``) and cached
under ``cache_dir/arm64`` keyed by package versions, so a second call costs seconds.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if not __package__:  # run as a script: python tests/kernel/arm64.py [CACHE_DIR]
    sys.path.insert(0, str(PROJECT_ROOT))

from tests.kernel import harness  # noqa: E402
from tests.kernel.guest_image import GuestImage, Share  # noqa: E402

# --- the machine ------------------------------------------------------------------------------------

CPU_MODEL = "cortex-a72"  # no pointer authentication: `-cpu max` is much slower under TCG
SMP = 2
MEMORY_MB = 1024
MACHINE_ARGS_NO_DTB = ["-accel", "tcg", "-M", "virt", "-cpu", CPU_MODEL, "-smp", str(SMP), "-m", str(MEMORY_MB)]
CMDLINE = "loglevel=4"  # the harness adds console= (the PL011, ttyAMA0), rdinit= and panic=

CPU_OPPS_HZ = [500_000_000, 1_000_000_000, 1_500_000_000, 2_000_000_000]  # mux parents: first, last
CPU_CLOCK_LATENCY_NS = 100_000
GPU_NODE = "gpu"  # the devfreq device's name: /sys/class/devfreq/gpu
GPU_OPPS_HZ = [200_000_000, 400_000_000, 600_000_000, 800_000_000]  # mux parents: first, last
CPU_MUX_GPIO_LINE = 0  # PL061 lines; QEMU's gpio-keys power button uses line 3
GPU_MUX_GPIO_LINE = 1

# Modules wanted, by name; the harness puts their dependencies (from each .ko's modinfo) first, and
# anything in modules.builtin is left out. Governors before the drivers that start with them: the
# imx-bus device is registered with `userspace` and fails to probe without it.
# The harness adds its share modules (virtio_pci: -virtfs is virtio-9p-pci on `virt`, 9p).
WANTED_MODULES = [
    "cpufreq_userspace",
    "cpufreq_powersave",
    "cpufreq_ondemand",
    "cpufreq_conservative",
    "cpufreq-dt",
    "governor_userspace",
    "governor_simpleondemand",
    "imx-bus",
]

# --- the chroot's root --------------------------------------------------------------------------------

ROOT_PACKAGES = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "busybox-static"]
# Runtime-dependency closure is followed only into these (no dpkg, perl, tar, tzdata, ...).
ROOT_FOLLOW = re.compile(r"^(lib.*|zlib1g|python3\.11.*|busybox-static)$")
# Distributions imported by governor.cli/daemon/client, sysfs_backends.linux and estimator.model.
WHEELS = ["numpy", "scipy", "pydantic", "pydantic-core", "typing-extensions", "annotated-types",
          "typing-inspection", "click", "PyYAML"]
SITE_DIR = "/opt/deadline-dvfs/site"  # wheels unpacked here (on PYTHONPATH in the guest)
GUEST_PYTHON = "/usr/bin/python3"
# Mount points for the harness (the guest's own proc, sys, dev and a tmpfs on /tmp, which holds
# the results share): the root is read-only inside the guest, so they must exist beforehand.
MOUNT_POINTS = ["proc", "sys", "dev", "tmp"]


class RegistryError(harness.KernelTestError):
    """The package registries (Debian's apt archive, PyPI) could not be reached or lacked a package."""


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RegistryError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


class _Arm64Apt:
    """apt-get/apt-cache for arm64 packages with private lists and cache, not the host's state."""

    LISTS_MAX_AGE_S = 24 * 3600

    def __init__(self, base: Path):
        self.base = base
        self.lists = base / "lists"
        self.opts = [
            "-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
            "-o", f"Dir::State::Lists={self.lists}", "-o", f"Dir::Cache={base / 'cache'}",
            "-o", "Dir::State::status=/dev/null", "-o", "APT::Sandbox::User=root",
        ]

    def update(self) -> None:
        stamp = self.base / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < self.LISTS_MAX_AGE_S:
            return
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["apt-get", "-q", *self.opts, "update"], capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 or re.search(r"^(W: Failed to fetch|E: )", text, re.M) or \
                not any(self.lists.glob("*_binary-arm64_Packages*")):
            if any(self.lists.glob("*_binary-arm64_Packages*")) and stamp.exists():
                return  # offline, but lists from an earlier run are still usable
            raise RegistryError("cannot reach the Debian archive for arm64 package lists (apt-get update): "
                                + " | ".join(text.strip().splitlines()[-3:]))
        shutil.rmtree(self.base / "memo", ignore_errors=True)  # answers from the old lists
        stamp.touch()

    def cache(self, *args: str) -> str:
        """apt-cache's answer, remembered until the lists change (each call parses ~20 MB of lists:
        a second prepare_arm64() would otherwise spend most of its time here)."""
        memo = self.base / "memo" / f"{_key(args)}.txt"
        if memo.exists():
            return memo.read_text()
        out = _run(["apt-cache", *self.opts, *args], f"apt-cache {' '.join(args)}")
        memo.parent.mkdir(exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(out)
        os.replace(tmp, memo)
        return out

    def versions(self, packages: list[str]) -> dict[str, str]:
        """Candidate version of each package that has one (virtual packages have none)."""
        found, name = {}, None
        for line in self.cache("policy", *packages).splitlines():
            if line and not line.startswith(" ") and line.endswith(":"):
                name = line[:-1].split(":")[0]  # "pkg:" or "pkg:arm64:"
            elif line.strip().startswith("Candidate:") and name is not None:
                version = line.split(":", 1)[1].strip()
                if version and version != "(none)":
                    found[name] = version
        return found

    def version(self, package: str) -> str:
        version = self.versions([package]).get(package)
        if version is None:
            raise RegistryError(f"package {package} (arm64) is not in the Debian archive's lists")
        return version

    def depends(self, packages: list[str]) -> dict[str, list[str]]:
        """Each package's Depends and Pre-Depends (every alternative), by package."""
        out = self.cache("depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
                         "--no-replaces", "--no-enhances", *packages)
        deps: dict[str, list[str]] = {}
        current: list[str] = []
        for line in out.splitlines():
            if line and not line.startswith(" "):
                current = deps.setdefault(line.strip().split(":")[0], [])
            else:
                m = re.match(r"^\s+\|?(?:Pre)?Depends: <?([^\s>:]+)", line)
                if m:
                    current.append(m.group(1))
        return deps

    def closure(self, roots: list[str], follow: re.Pattern) -> dict[str, str]:
        """Package -> version for ``roots`` and their runtime dependencies that ``follow`` admits
        (one apt-cache call per level of the dependency graph, not per package)."""
        found: dict[str, str] = {}
        known = self.versions(roots)
        missing = [r for r in roots if r not in known]
        if missing:
            raise RegistryError(f"packages {missing} (arm64) are not in the Debian archive's lists")
        level, seen = list(roots), set(roots)
        while level:
            found.update(self.versions(level))  # virtual packages drop out; their providers are followed
            nxt = []
            for deps in self.depends([p for p in level if p in found]).values():
                for dep in deps:
                    if follow.match(dep) and dep not in seen:
                        seen.add(dep)
                        nxt.append(dep)
            level = nxt
        return dict(sorted(found.items()))

    def download(self, packages: dict[str, str], into: Path) -> list[Path]:
        into.mkdir(parents=True, exist_ok=True)

        def deb(package: str, version: str) -> Path | None:
            # apt-get download writes an epoch as %3a; some mirrors' tools drop it
            for v in (version.replace(":", "%3a"), _deb_version(version)):
                hits = sorted(into.glob(f"{package}_{v}_*.deb"))
                if hits:
                    return hits[0]
            return None

        missing = [f"{p}={v}" for p, v in packages.items() if deb(p, v) is None]
        if missing:
            _run(["apt-get", "-q", *self.opts, "download", *missing], "apt-get download (arm64)", cwd=into)
        debs = {p: deb(p, v) for p, v in packages.items()}
        lost = [p for p, d in debs.items() if d is None]
        if lost:
            raise RegistryError(f"apt-get download did not produce {lost}")
        return list(debs.values())


def _deb_version(version: str) -> str:
    return version.split(":", 1)[-1]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _build_once(target: Path, build) -> Path:
    """Build ``target`` (a directory or file) in a temporary sibling and rename it into place, so an
    interrupted build is never taken for a finished one."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        os.replace(tmp / "out", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- kernel and modules ---------------------------------------------------------------------------------

def _kernel(apt: _Arm64Apt, base: Path) -> tuple[Path, list[Path]]:
    """Debian's current arm64 kernel (what ``linux-image-arm64`` depends on), unpacked, and the
    modules we insmod (with their dependencies, built-in ones left out)."""
    meta = apt.depends(["linux-image-arm64"]).get("linux-image-arm64", [])
    image_pkg = next((d for d in meta if d.startswith("linux-image-")), None)
    if image_pkg is None:
        raise RegistryError("linux-image-arm64 (arm64) names no linux-image-* package")
    version = apt.version(image_pkg)
    tree = base / f"tree-{image_pkg}-{_deb_version(version)}"
    if not tree.is_dir():
        (deb,) = apt.download({image_pkg: version}, base / "debs")
        harness.unpack_deb(deb, tree)
    (moddir,) = (tree / "lib" / "modules").iterdir()
    builtin = {Path(line.strip()).name.split(".ko")[0].replace("-", "_")
               for line in (moddir / "modules.builtin").read_text().splitlines() if line.strip()}
    wanted = [m for m in harness.SHARE_MODULES + WANTED_MODULES if m.replace("-", "_") not in builtin]
    modules = harness.kernel_modules(tree, wanted, tree / "insmod")
    (image,) = (tree / "boot").glob("vmlinuz-*")  # an uncompressed arm64 Image (QEMU takes gzip too)
    return image, modules


# --- device tree ----------------------------------------------------------------------------------------

def _opp_table(label: str, name: str, rates_hz: list[int], shared: bool, latency_ns: int | None) -> str:
    entries = "".join(
        f"\t\topp-{hz} {{\n\t\t\topp-hz = /bits/ 64 <{hz}>;\n"
        + (f"\t\t\tclock-latency-ns = <{latency_ns}>;\n" if latency_ns is not None else "")
        + "\t\t};\n"
        for hz in rates_hz
    )
    return (f"\t{label}: {name} {{\n\t\tcompatible = \"operating-points-v2\";\n"
            + ("\t\topp-shared;\n" if shared else "") + entries + "\t};\n")


def _mux(label: str, name: str, parents: tuple[str, str], gpio_path: str, line: int) -> str:
    return (f"\t{label}: {name} {{\n\t\tcompatible = \"gpio-mux-clock\";\n\t\t#clock-cells = <0>;\n"
            f"\t\tclocks = <&{parents[0]}>, <&{parents[1]}>;\n"
            f"\t\tselect-gpios = <&{{{gpio_path}}} {line} 0>;\n\t}};\n")


def _fixed(label: str, name: str, hz: int) -> str:
    return (f"\t{label}: {name} {{\n\t\tcompatible = \"fixed-clock\";\n\t\t#clock-cells = <0>;\n"
            f"\t\tclock-frequency = <{hz}>;\n\t}};\n")


def dts_additions(dts: str) -> str:
    """Our clocks, OPP tables and devfreq node, written against QEMU's own (decompiled) tree."""
    gpio = re.search(r"^\t([\w,.-]+@[0-9a-f]+) \{\n(?:\t\t[^\n]*\n)*?\t\tcompatible = \"arm,pl061(?:\\0|\")", dts, re.M)
    if gpio is None:
        raise harness.KernelTestError("QEMU's virt device tree has no arm,pl061 GPIO node to select the clock muxes")
    gpio_path = "/" + gpio.group(1)
    cpus = re.findall(r"^\t\t(cpu@[0-9a-f]+) \{", dts, re.M)
    if len(cpus) != SMP:
        raise harness.KernelTestError(f"QEMU's virt device tree shows {cpus}, expected {SMP} cpu@N nodes")
    root = (
        "/ {\n"
        + _fixed("cpu_clk_lo", "cpu-clk-lo", CPU_OPPS_HZ[0]) + _fixed("cpu_clk_hi", "cpu-clk-hi", CPU_OPPS_HZ[-1])
        + _mux("cpu_clk", "cpu-clk", ("cpu_clk_lo", "cpu_clk_hi"), gpio_path, CPU_MUX_GPIO_LINE)
        + _opp_table("cpu_opp", "opp-table-cpu", CPU_OPPS_HZ, True, CPU_CLOCK_LATENCY_NS)
        + _fixed("gpu_clk_lo", "gpu-clk-lo", GPU_OPPS_HZ[0]) + _fixed("gpu_clk_hi", "gpu-clk-hi", GPU_OPPS_HZ[-1])
        + _mux("gpu_clk", "gpu-clk", ("gpu_clk_lo", "gpu_clk_hi"), gpio_path, GPU_MUX_GPIO_LINE)
        + _opp_table("gpu_opp", "opp-table-gpu", GPU_OPPS_HZ, False, None)
        + f"\t{GPU_NODE} {{\n\t\tcompatible = \"fsl,imx8m-nic\";\n\t\tclocks = <&gpu_clk>;\n"
        + "\t\toperating-points-v2 = <&gpu_opp>;\n\t};\n"
        + "};\n"
    )
    per_cpu = "".join(f"&{{/cpus/{c}}} {{\n\tclocks = <&cpu_clk>;\n\toperating-points-v2 = <&cpu_opp>;\n}};\n"
                      for c in cpus)
    return root + per_cpu


def _dtb(qemu: str, dtc: str, base: Path) -> Path:
    qemu_version = _run([qemu, "--version"], "qemu --version").splitlines()[0]
    import inspect

    recipe = [inspect.getsource(f) for f in (dts_additions, _opp_table, _mux, _fixed)]
    recipe += [CPU_OPPS_HZ, CPU_CLOCK_LATENCY_NS, GPU_NODE, GPU_OPPS_HZ, CPU_MUX_GPIO_LINE, GPU_MUX_GPIO_LINE]
    target = base / f"virt-{_key(qemu_version, MACHINE_ARGS_NO_DTB, recipe)}.dtb"

    def build(tmp: Path) -> None:
        args = list(MACHINE_ARGS_NO_DTB)
        args[args.index("virt")] = f"virt,dumpdtb={tmp / 'virt.dtb'}"
        _run([qemu, *args, "-display", "none"], "qemu -M virt,dumpdtb=")
        dts = _run([dtc, "-q", "-I", "dtb", "-O", "dts", str(tmp / "virt.dtb")], "dtc (decompile)")
        full = dts + "\n" + dts_additions(dts)
        (tmp / "arm64-dvfs.dts").write_text(full)
        _run([dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(tmp / "out"), str(tmp / "arm64-dvfs.dts")],
             "dtc (compile)")
        shutil.copyfile(tmp / "arm64-dvfs.dts", base / (target.stem + ".dts.txt"))  # kept for reading

    return _build_once(target, build)


# --- the arm64 root -------------------------------------------------------------------------------------

def _elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF file (no binutils needed on the host)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, _entsize in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        needed = []
        for pos in range(offset, offset + size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                needed.append(data[strtab + val:data.index(b"\0", strtab + val)].decode())
        return needed
    return []


def _check_libraries(root: Path) -> None:
    """Every shared library the interpreter, its extension modules and the wheels' extensions need
    is in the root: a missing one would otherwise only show as an error inside the booted guest."""
    lib_dirs = ["lib", "lib/aarch64-linux-gnu", "usr/lib", "usr/lib/aarch64-linux-gnu"]
    available = {p.name for d in lib_dirs if (root / d).is_dir() for p in (root / d).iterdir()}
    available |= {p.name for p in (root / SITE_DIR.lstrip("/")).glob("*.libs/*")}
    binaries = [root / "usr/bin/python3.11", *(root / "usr/lib/python3.11/lib-dynload").glob("*.so"),
                *(root / SITE_DIR.lstrip("/")).rglob("*.so")]
    missing = {f"{lib} (for {b.relative_to(root)})" for b in binaries for lib in _elf_needed(b)
               if lib not in available}
    if missing:
        raise harness.KernelTestError(f"the arm64 root lacks shared libraries: {sorted(missing)[:10]}; add their "
                           "packages to ROOT_PACKAGES/ROOT_FOLLOW in tests/kernel/arm64.py")


def _wheel_versions() -> dict[str, str]:
    """The guest runs the same library versions as the host's environment."""
    versions = {}
    for dist in WHEELS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError as exc:
            raise harness.KernelTestError(f"{dist} is not installed here: pip install -e . first") from exc
    return versions


def _download_wheels(versions: dict[str, str], into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{n}_aarch64" for n in range(17, 37)]  # glibc 2.36
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           *[a for p in platforms for a in ("--platform", p)], "--python-version", "3.11",
           "--implementation", "cp", "--no-deps", "-d", str(into),
           *[f"{d}=={v}" for d, v in versions.items()]]
    _run(cmd, "pip download (aarch64 cp311 wheels)")
    wheels = []
    for dist, version in versions.items():
        prefix = re.sub(r"[-_.]+", "_", dist).lower() + "-" + version + "-"
        found = [w for w in into.glob("*.whl") if w.name.lower().startswith(prefix)]
        if not found:
            raise RegistryError(f"pip download gave no aarch64 wheel for {dist}=={version}")
        wheels.append(found[0])
    return wheels


LAUNCHER = f"""#!{GUEST_PYTHON}
# dvfs-gov inside the arm64 guest: the project comes from PYTHONPATH (the read-only checkout share).
import sys

from governor.cli import main

sys.exit(main())
"""


def _sysroot(apt: _Arm64Apt, base: Path, project_guest_path: str) -> Path:
    packages = apt.closure(ROOT_PACKAGES, ROOT_FOLLOW)
    wheels = _wheel_versions()
    target = base / f"root-{_key(packages, wheels, LAUNCHER, MOUNT_POINTS, sys.version_info[:2])}"

    def build(tmp: Path) -> None:
        root = tmp / "out"
        root.mkdir()
        for deb in apt.download(packages, base / "debs"):
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
        site = root / SITE_DIR.lstrip("/")
        site.mkdir(parents=True)
        for wheel in _download_wheels(wheels, base / "wheels"):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(site)
        for so in site.rglob("*.so*"):  # zip extraction drops file modes; keep libraries as pip would
            so.chmod(0o755)
        (root / "usr/bin/python3").symlink_to("python3.11")
        if not (root / "bin" / "busybox").exists():
            raise harness.KernelTestError("busybox-static (arm64) did not unpack /bin/busybox")
        for applet in ("sh", "cat", "ls", "sleep", "echo", "mkdir", "kill"):  # /bin/sh for the harness
            if not (root / "bin" / applet).exists():
                (root / "bin" / applet).symlink_to("busybox")
        launcher = root / "usr/local/bin/dvfs-gov"
        launcher.parent.mkdir(parents=True, exist_ok=True)
        launcher.write_text(LAUNCHER)
        launcher.chmod(0o755)
        etc = root / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (etc / "group").write_text("root:x:0:\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        (root / "root").mkdir(exist_ok=True)
        for mp in MOUNT_POINTS:
            (root / mp).mkdir(exist_ok=True)
        _check_libraries(root)
        # Bytecode ahead of time: the root is read-only in the guest. CPython's .pyc depends only on
        # the minor version (the host runs 3.11 too), not on the architecture.
        if sys.version_info[:2] == (3, 11):
            for tree in (root / "usr/lib/python3.11", site):
                compileall.compile_dir(tree, quiet=2, workers=1)

    _build_once(target, build)
    # The checkout is mounted at its host path, so paths mean the same in both guests.
    (target / project_guest_path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return target


def _precompile_project() -> None:
    """Bytecode for the checkout's own packages, next to the sources as any Python run leaves it: the
    checkout is read-only inside the guest, and compiling there again at every Python start would
    cost seconds under TCG. The .pyc files depend on the minor version only (the guest runs 3.11)."""
    if sys.version_info[:2] != (3, 11):
        return
    for pkg in ("governor", "estimator", "sysfs_backends", "configs", "tests"):
        if (PROJECT_ROOT / pkg).is_dir():
            compileall.compile_dir(PROJECT_ROOT / pkg, quiet=2, workers=1)


def _prune(base: Path, prefix: str, keep: Path) -> None:
    """Drop cache entries of earlier package versions (a root is ~300 MB) once unused for two days:
    another checkout sharing the cache may still boot an older one."""
    now = time.time()
    os.utime(keep)
    for old in base.glob(f"{prefix}*"):
        if old.name.split(".dts")[0] in (keep.name, keep.stem) or now - old.stat().st_mtime < 2 * 86400:
            continue
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


# --- the recipe -----------------------------------------------------------------------------------------

def prepare_arm64(cache_dir: Path) -> GuestImage:
    """Everything the harness needs to boot the arm64 guest; cached under ``cache_dir/arm64``."""
    base = Path(cache_dir) / "arm64"
    harness.ensure_tools({"qemu-system-aarch64": "qemu-system-arm", "dtc": "device-tree-compiler"})
    qemu, dtc = shutil.which("qemu-system-aarch64"), shutil.which("dtc")
    apt = _Arm64Apt(base / "apt")
    apt.update()
    kernel, modules = _kernel(apt, base)
    dtb = _dtb(qemu, dtc, base)
    project = str(PROJECT_ROOT)
    root = _sysroot(apt, base, project)
    _precompile_project()
    for prefix, keep in (("tree-", kernel.parent.parent), ("virt-", dtb), ("root-", root)):
        _prune(base, prefix, keep)
    return GuestImage(
        arch="arm64",
        qemu=Path(qemu),
        machine_args=[*MACHINE_ARGS_NO_DTB, "-dtb", str(dtb)],
        kernel=kernel,
        modules=modules,
        cmdline=CMDLINE,
        root=root,
        python=GUEST_PYTHON,
        env={
            "PYTHONPATH": f"{project}:{SITE_DIR}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        },
        shares=[Share(host_path=PROJECT_ROOT, guest_path=project, readonly=True)],
        busybox=root / "bin" / "busybox",
    )


if __name__ == "__main__":
    start = time.monotonic()
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deadline-dvfs" / "kernel-tests"
    image = prepare_arm64(cache)
    print(image)
    print(f"prepared in {time.monotonic() - start:.1f} s")
