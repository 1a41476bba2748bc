"""Boot a real Linux kernel under QEMU (TCG) and run one command of ours against its real /sys.

Why a harness of our own: the Linux backend has only ever met kernels we wrote (the virtual board,
sysfs-shaped trees). Real cpufreq/devfreq cores behave differently (asynchronous limits, rounding,
setpoints), so the tests boot Debian's own kernels, unchanged, on made-up but real hardware
descriptions (an ACPI SSDT on x86_64, a device tree on arm64).

Everything comes from the Debian registry through its ordinary client: the tools (QEMU, iasl, dtc,
busybox-static, cpio) are installed with apt-get when missing, the kernel packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache folder (never installed). If
the registry cannot be reached and nothing is cached, :class:`KernelTestError` says so: the tests
fail, they are never skipped.

The guest runs a tiny initramfs (static busybox and an init script) that insmods the image's
modules, mounts the 9p shares (the chroot's root, read-only, and a writable results folder),
mounts the guest's own proc/sys/dev and a tmpfs at /tmp inside the chroot, runs one command there,
leaves its exit status in the results folder and powers off.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.kernel.guest_image import GuestImage

RESULTS_TAG = "results"
ROOT_TAG = "hostroot"
RESULTS_GUEST_DIR = "/tmp/dvfs-results"  # where the writable results share appears in the chroot
# virtio transport + 9p: what every guest needs to mount its shares (module names, dependencies
# are added by kernel_modules()).
SHARE_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
MARK = "DVFS-GUEST:"  # console lines written by our init start with this
TIMINGS: dict[str, dict] = {}  # arch -> boot/run times of this session's guests (terminal summary)


class KernelTestError(RuntimeError):
    """A real-kernel test could not even start (registry unreachable, package missing, bad image);
    the message says what and how to fix it."""


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/deadline-dvfs/kernel-tests``: downloads and unpacked kernels
    survive between runs, so only the first run needs the registry."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "deadline-dvfs" / "kernel-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- tools and packages ----------------------------------------------------------------------
_apt_lock = threading.Lock()  # both guests are prepared in parallel; apt is not reentrant
_apt_updated = False
_apt_problem = ""  # what `apt-get update` said when it could not fetch (it may still exit 0)


def _run(cmd: list[str], timeout_s: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=env)


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _apt_update() -> None:
    """Refresh the package lists once per test session (a fresh CI machine has none)."""
    global _apt_updated, _apt_problem
    if _apt_updated:
        return
    res = _run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"], timeout_s=600)
    text = res.stdout + res.stderr
    failed = [line for line in text.splitlines() if re.match(r"(Err:|W: Failed to fetch|E: )", line)]
    if res.returncode != 0 or failed:
        _apt_problem = _tail("\n".join(failed) or text, 3)
    _apt_updated = True


def _unreachable(what: str) -> KernelTestError:
    return KernelTestError(
        f"{what}; the real-kernel tests need the Debian package registry, which could not be reached "
        f"(`apt-get update`: {_apt_problem})" if _apt_problem else what)


def ensure_tools(tools: dict[str, str]) -> None:
    """Install the Debian package of every missing command (``{command: package}``)."""
    with _apt_lock:
        missing = sorted({pkg for cmd, pkg in tools.items() if not _tool_ok(cmd)})
        if not missing:
            return
        if shutil.which("apt-get") is None:
            raise KernelTestError(f"missing tools {sorted(tools)} and no apt-get to install "
                                  f"Debian packages {missing}; install them by hand")
        install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q",
                   "--no-install-recommends", *missing]
        res = _run(install)
        if res.returncode != 0:
            _apt_update()
            res = _run(install)
        if res.returncode != 0:
            raise _unreachable(f"could not install {' '.join(missing)} from the Debian package registry "
                               f"(unreachable, or not root?): {_tail(res.stderr or res.stdout)}")
        still = [cmd for cmd in tools if not _tool_ok(cmd)]
        if still:
            raise KernelTestError(f"installed {' '.join(missing)} but still missing: {still}")


def _tool_ok(cmd: str) -> bool:
    path = shutil.which(cmd)
    if path is None:
        return False
    # the initramfs has no libraries: its busybox must be the static one (package busybox-static)
    return cmd != "busybox" or is_static_elf(Path(path))


def is_static_elf(path: Path) -> bool:
    """True if the ELF file asks for no program interpreter (no PT_INTERP header)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only: both our hosts are
        return False
    end = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(end + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    return all(struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def resolve_package(name: str, prefix: str = "linux-image-", arch: str | None = None) -> str:
    """The concrete package a metapackage (``linux-image-amd64``) depends on, e.g.
    ``linux-image-6.1.0-56-amd64``; ``arch`` for a foreign architecture (``arm64``)."""
    query = f"{name}:{arch}" if arch else name
    for attempt in range(2):
        with _apt_lock:
            res = _run(["apt-cache", "depends", "--important", query], timeout_s=120)
        found = re.findall(r"Depends:\s*(" + re.escape(prefix) + r"[^\s:]+)", res.stdout)
        if res.returncode == 0 and found:
            return found[0]
        if attempt == 0:
            with _apt_lock:
                _apt_update()
    raise _unreachable(f"the package lists do not know {query!r} (apt-cache: "
                       f"{_tail(res.stderr or res.stdout) or 'no dependency'})")


def fetch_deb(package: str, dest: Path, arch: str | None = None) -> Path:
    """``apt-get download`` PACKAGE into DEST (once: a cached .deb is reused)."""
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_*_{arch}.deb" if arch else f"{package}_*.deb"
    found = sorted(dest.glob(pattern))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        os.chmod(tmp, 0o755)  # apt's download user must be able to write there
        query = f"{package}:{arch}" if arch else package
        for attempt in range(2):
            with _apt_lock:
                res = _run(["apt-get", "download", "-q", query], timeout_s=900, cwd=Path(tmp))
            debs = list(Path(tmp).glob("*.deb"))
            if res.returncode == 0 and debs:
                break
            if attempt == 0:
                with _apt_lock:
                    _apt_update()
        else:
            raise _unreachable(f"could not download {query} from the Debian package registry: "
                               f"{_tail(res.stderr or res.stdout)}")
        target = dest / debs[0].name
        os.replace(debs[0], target)
        return target


def unpack_deb(deb: Path, dest: Path) -> Path:
    """``dpkg-deb -x`` into DEST (once; unpacked beside it and renamed, so a half-unpacked tree is
    never taken for a whole one)."""
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".part-"))
    res = _run(["dpkg-deb", "-x", str(deb), str(tmp)], timeout_s=600)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KernelTestError(f"dpkg-deb -x {deb}: {_tail(res.stderr)}")
    try:
        os.rename(tmp, dest)
    except OSError:  # another process unpacked it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_kernel(metapackage: str, dest_root: Path, arch: str | None = None) -> Path:
    """Download and unpack the kernel package behind METAPACKAGE; returns the unpacked tree (with
    ``boot/`` and ``lib/modules/<version>/``). A tree unpacked earlier is reused without asking the
    registry, so runs after the first one work offline."""
    dest_root.mkdir(parents=True, exist_ok=True)
    marker = dest_root / f"{metapackage}.current"
    if marker.exists():
        tree = dest_root / marker.read_text().strip()
        if tree.is_dir():
            return tree
    package = resolve_package(metapackage, arch=arch)
    deb = fetch_deb(package, dest_root / "debs", arch)
    tree = unpack_deb(deb, dest_root / package)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(package)
    os.replace(tmp, marker)
    return tree


# ---- modules ---------------------------------------------------------------------------------
def _elf_section(data: bytes, wanted: str) -> bytes:
    """The bytes of one ELF64 section (by name)."""
    end = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(end + "IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, strsize = header(shstrndx)
    names = data[stroff: stroff + strsize]
    for i in range(shnum):
        name, off, size = header(i)
        if names[name: names.index(b"\0", name)].decode() == wanted:
            return data[off: off + size]
    return b""


def _ko_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(raw)
    if path.suffix == ".gz":
        return gzip.decompress(raw)
    if path.suffix == ".zst":
        res = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        return res.stdout
    return raw


def kernel_modules(tree: Path, names: list[str], out_dir: Path) -> list[Path]:
    """The .ko files for NAMES and everything they depend on (read from each module's
    ``.modinfo``), dependencies first, decompressed into OUT_DIR. The unpacked package has no
    modules.dep (depmod runs at install time, and we never install)."""
    found: dict[str, Path] = {}
    for ko in (tree / "lib" / "modules").glob("*/kernel/**/*.ko*"):
        found[ko.name.split(".ko")[0].replace("-", "_")] = ko
    out_dir.mkdir(parents=True, exist_ok=True)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        if key not in found:
            raise KernelTestError(f"kernel module {name!r} (needed by {' <- '.join(chain) or 'the image'}) "
                                  f"is not in {tree}: built in, or not built by this kernel?")
        seen.add(key)
        data = _ko_bytes(found[key])
        info = _elf_section(data, ".modinfo").split(b"\0")
        for entry in info:
            if entry.startswith(b"depends="):
                for dep in filter(None, entry[len(b"depends="):].decode().split(",")):
                    visit(dep, (*chain, name))
        target = out_dir / f"{key}.ko"
        if not target.exists():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        order.append(target)

    for name in names:
        visit(name, ())
    return order


# ---- initramfs -------------------------------------------------------------------------------
_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /newroot
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "@MARK@ $*" > /dev/console; }
halt_now() { sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
say "init at $(up)"
for m in $(cat /modules.list); do
  insmod "/modules/$m" || say "insmod $m failed"
done
say "modules loaded at $(up)"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 @ROOT_TAG@ /newroot \
  || { say "cannot mount the root share"; halt_now; }
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mount -t tmpfs -o mode=1777,size=60% tmpfs /newroot/tmp
@SHARES@
mkdir -p /newroot@RESULTS@
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 @RESULTS_TAG@ /newroot@RESULTS@ \
  || { say "cannot mount the results share"; halt_now; }
cp /cmd.sh /newroot/tmp/.dvfs-cmd.sh
say "command start at $(up)"
chroot /newroot /bin/sh /tmp/.dvfs-cmd.sh
rc=$?
echo "$rc" > /newroot@RESULTS@/.exit-status
say "command exit $rc at $(up)"
sync
umount /newroot@RESULTS@
halt_now
"""


def _init_script(image: GuestImage) -> str:
    shares = []
    for i, share in enumerate(image.shares):
        opts = "trans=virtio,version=9p2000.L,msize=524288" + (",ro,cache=loose" if share.readonly else "")
        guest = shlex.quote("/newroot" + share.guest_path)
        shares.append(f"mkdir -p {guest} 2>/dev/null; mount -t 9p -o {opts} share{i} {guest} "
                      f"|| say 'cannot mount share{i} at {share.guest_path}'")
    return (_INIT.replace("@MARK@", MARK).replace("@ROOT_TAG@", ROOT_TAG)
            .replace("@RESULTS_TAG@", RESULTS_TAG).replace("@RESULTS@", RESULTS_GUEST_DIR)
            .replace("@SHARES@", "\n".join(shares)))


def _command_script(image: GuestImage, command: list[str]) -> str:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp/home",
           "XDG_STATE_HOME": "/tmp/home/.local/state", "PYTHONDONTWRITEBYTECODE": "1",
           "DVFS_RESULTS": RESULTS_GUEST_DIR, "LANG": "C.UTF-8", **image.env}
    lines = ["mkdir -p /tmp/home", "cd /tmp"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines) + "\n"


def build_initramfs(image: GuestImage, command: list[str], out: Path) -> Path:
    """A gzipped newc cpio: static busybox, our init, the modules and the command script."""
    busybox = str(image.busybox) if image.busybox else shutil.which("busybox")
    if busybox is None or not is_static_elf(Path(busybox)):
        raise KernelTestError(f"no static busybox for the {image.arch} initramfs (Debian package busybox-static)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        (root / "modules").mkdir()
        names = []
        for k, ko in enumerate(image.modules):
            name = f"{k:02d}-{ko.name}"
            shutil.copy2(ko, root / "modules" / name)
            names.append(name)
        (root / "modules.list").write_text("\n".join(names) + "\n")
        (root / "init").write_text(_init_script(image))
        (root / "init").chmod(0o755)
        (root / "cmd.sh").write_text(_command_script(image, command))
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input="\n".join(files).encode(),
                              capture_output=True, check=True)
    out.write_bytes(gzip.compress(cpio.stdout, compresslevel=1))
    return out


# ---- booting ---------------------------------------------------------------------------------
@dataclass
class GuestRun:
    """What one boot gave: the command's exit status (None if it never finished), the console,
    the results folder, and where the time went (host wall clock)."""

    exit_status: int | None
    console: str
    results: Path
    timed_out: bool
    boot_s: float | None  # QEMU start until the command started
    run_s: float | None  # command start until its exit
    wall_s: float  # the whole QEMU run
    qemu_returncode: int | None

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


_CONSOLE = {"x86_64": "ttyS0", "arm64": "ttyAMA0"}


def qemu_command(image: GuestImage, initrd: Path, results: Path, console_log: Path) -> list[str]:
    cmdline = f"console={_CONSOLE[image.arch]} rdinit=/init panic=-1 {image.cmdline}".strip()
    cmd = [str(image.qemu), *image.machine_args, "-kernel", str(image.kernel), "-initrd", str(initrd),
           "-append", cmdline, "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
           "-serial", f"file:{console_log}",
           "-virtfs", f"local,path={image.root},mount_tag={ROOT_TAG},security_model=none,readonly=on,"
                      "multidevs=remap",
           "-virtfs", f"local,path={results},mount_tag={RESULTS_TAG},security_model=none"]
    for i, share in enumerate(image.shares):
        ro = ",readonly=on" if share.readonly else ""
        cmd += ["-virtfs", f"local,path={share.host_path},mount_tag=share{i},security_model=none{ro},"
                           "multidevs=remap"]
    return cmd


def boot(image: GuestImage, command: list[str], timeout_s: float, workdir: Path) -> GuestRun:
    """Boot IMAGE, run COMMAND in its chroot, wait for the power-off (at most TIMEOUT_S).

    The results folder (``workdir/results``) is the guest's ``$DVFS_RESULTS``."""
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results"
    results.mkdir(exist_ok=True)
    console_log = workdir / "console.log"
    console_log.write_text("")
    initrd = build_initramfs(image, command, workdir / "initramfs.cpio.gz")
    cmd = qemu_command(image, initrd, results, console_log)
    (workdir / "qemu-command.txt").write_text(shlex.join(cmd) + "\n")
    t0 = time.monotonic()
    start_mark = f"{MARK} command start"
    exit_mark = f"{MARK} command exit"
    t_start = t_exit = None
    with open(workdir / "qemu-stderr.log", "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        timed_out = False
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout_s:
                    timed_out = True
                    break
                if t_start is None or t_exit is None:
                    text = console_log.read_text(errors="replace")
                    if t_start is None and start_mark in text:
                        t_start = time.monotonic()
                    if t_exit is None and exit_mark in text:
                        t_exit = time.monotonic()
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    wall = time.monotonic() - t0
    console = console_log.read_text(errors="replace")
    qemu_err = (workdir / "qemu-stderr.log").read_text(errors="replace")
    if qemu_err.strip():
        console += "\n[qemu] " + qemu_err
    if t_start is None and start_mark in console:
        t_start = t0 + wall
    if t_exit is None and exit_mark in console:
        t_exit = t0 + wall
    status_file = results / ".exit-status"
    status = int(status_file.read_text()) if status_file.exists() else None
    return GuestRun(
        exit_status=status, console=console, results=results, timed_out=timed_out,
        boot_s=round(t_start - t0, 2) if t_start else None,
        run_s=round(t_exit - t_start, 2) if t_start and t_exit else None,
        wall_s=round(wall, 2), qemu_returncode=proc.returncode,
    )
