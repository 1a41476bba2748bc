"""The virtual board's kernel mounted as a file system (FUSE), so programs drive it as a real /sys.

The in-process hook (``VirtualBoard.backend()``) hands reads and writes to ``VirtualKernel`` inside
the caller; here every ``read(2)`` and ``write(2)`` of the mounted tree reaches the same
``VirtualKernel.read``/``write`` through the kernel's FUSE driver instead. Any program then sees
the board exactly as it would see a real one: the Linux backend with ``sysfs_root=MOUNTPOINT`` and
no hook, ``cat``, ``echo V > F`` from a shell. What sysfs does and we reproduce:

* one store per ``write(2)`` (the whole buffer, whatever the offset), errors are the kernel's errno
  (EINVAL, EACCES, EBUSY, ... from ``VirtualKernel``), ``O_TRUNC`` is accepted and does nothing;
* a read is generated at offset 0 and served from that snapshot for the rest of the same open file
  (sysfs fills one page per open), so a reader that reads in pieces sees one consistent value;
* opening a read-only attribute for writing is EACCES even for root (kernfs has no ``store``);
  modes are the tree's (with ``default_permissions`` the kernel checks them for other users);
* symlinks (``cpuN/cpufreq``, class links) are the tree's; nothing can be created, removed or
  renamed; the simulator's own state (``.virtual/``, temporary files) is not visible.

Every store is optionally logged as one JSON line with the thermal cap in force at that moment,
which is how the dynamics benchmark counts writes above an active cap from outside the governor.

FUSE needs ``/dev/fuse``, the ``mfusepy`` (or ``fusepy``) package with libfuse 3 (or 2), and root
or ``fusermount``. ``fuse_unavailable()`` says which is missing; callers keep the in-process hook
then. ``dvfs-gov virtual-mount`` serves a mount in the foreground; ``mounted()`` is the context
manager for tests and benchmarks (a child process, so libfuse's signal handlers stay out of ours).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sysfs_backends.virtual.board import VirtualKernel

MOUNT_TIMEOUT_S = 20.0
_FREQ_ATTRS = {"scaling_setspeed", "scaling_min_freq", "scaling_max_freq", "set_freq", "min_freq", "max_freq"}


class FuseUnavailable(RuntimeError):
    """FUSE cannot be used on this machine; the message says what is missing."""


def _fuse_module():
    """mfusepy (libfuse 3 or 2) or fusepy (libfuse 2); ImportError/OSError when neither loads."""
    try:
        import mfusepy as fuse
    except ImportError:
        import fuse  # fusepy
    return fuse


def fuse_unavailable() -> str | None:
    """Why a mount cannot work here (one line), or None when it can."""
    try:
        _fuse_module()
    except ImportError:
        return "FUSE unavailable: neither mfusepy nor fusepy is installed (pip install 'deadline-dvfs[fuse]')"
    except OSError as exc:  # the package found no libfuse
        return f"FUSE unavailable: no libfuse library ({exc}); install libfuse2 or libfuse3-3"
    if not os.path.exists("/dev/fuse"):
        return "FUSE unavailable: /dev/fuse does not exist (no fuse kernel module, or a container without it)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "FUSE unavailable: /dev/fuse is not readable and writable by this user"
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "FUSE unavailable: not root and no fusermount/fusermount3 (install the fuse3 package)"
    return None


def _make_operations(root: Path, store_log: Path | None):
    fuse = _fuse_module()

    class VirtualSysfs(fuse.Operations):
        """FUSE operations over a virtual board's tree; reads and writes go to ``VirtualKernel``."""

        use_ns = True

        def __init__(self) -> None:
            self.root = root
            self.kernel = VirtualKernel(root)
            self._snapshots: dict[int, bytes] = {}  # per open file: what offset 0 returned
            self._next_fh = 1
            self._lock = threading.Lock()
            self._log = open(store_log, "a", buffering=1) if store_log else None  # noqa: SIM115
            self.started = False

        def init(self, path):
            self.started = True  # mounted and serving: a non-zero end of the loop is then a signal

        # ---- names -----------------------------------------------------------------------
        def _local(self, path: str) -> str:
            parts = [p for p in path.split("/") if p]
            if any(p.startswith(".") for p in parts):  # the simulator's state, temporary files
                raise fuse.FuseOSError(errno.ENOENT)
            return os.path.join(self.root, *parts)

        def getattr(self, path, fh=None):
            try:
                st = os.lstat(self._local(path))
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno) from None
            size = 4096 if stat.S_ISREG(st.st_mode) else st.st_size  # sysfs: one page per attribute
            return {"st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_uid": 0, "st_gid": 0,
                    "st_size": size, "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                    "st_ctime": st.st_ctime_ns}

        def readdir(self, path, fh):
            try:
                names = os.listdir(self._local(path))
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno) from None
            return [".", ".."] + sorted(n for n in names if not n.startswith("."))

        def readlink(self, path):
            try:
                return os.readlink(self._local(path))
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno) from None

        def statfs(self, path):
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

        # ---- attributes ------------------------------------------------------------------
        def open(self, path, flags):
            local = self._local(path)
            try:
                st = os.stat(local)
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno) from None
            if stat.S_ISDIR(st.st_mode):
                raise fuse.FuseOSError(errno.EISDIR)
            if flags & os.O_ACCMODE != os.O_RDONLY and not st.st_mode & 0o222:
                raise fuse.FuseOSError(errno.EACCES)  # kernfs: no store for a read-only attribute
            with self._lock:
                fh, self._next_fh = self._next_fh, self._next_fh + 1
            return fh

        def truncate(self, path, length, fh=None):
            """O_TRUNC on an attribute: accepted and meaningless, as on sysfs."""
            st = os.stat(self._local(path))
            if not st.st_mode & 0o222:
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def read(self, path, size, offset, fh):
            snapshot = self._snapshots.get(fh)
            if offset == 0 or snapshot is None:
                try:
                    snapshot = self.kernel.read(path).encode()
                except OSError as exc:
                    raise fuse.FuseOSError(exc.errno or errno.EIO) from None
                self._snapshots[fh] = snapshot
            return snapshot[offset:offset + size]

        def write(self, path, data, offset, fh):
            if not data:
                return 0
            value = data.decode(errors="replace")
            cap = self._cap_in_force(path) if self._log else None
            err = 0
            try:
                self.kernel.write(path, value)
            except OSError as exc:
                err = exc.errno or errno.EIO
            if self._log:
                self._log_store(path, value, err, cap)
            if err:
                raise fuse.FuseOSError(err)
            return len(data)

        def release(self, path, fh):
            self._snapshots.pop(fh, None)
            return 0

        def flush(self, path, fh):
            return 0

        def utimens(self, path, times=None):
            return 0

        # ---- what sysfs refuses ----------------------------------------------------------
        def create(self, path, mode, fi=None):
            raise fuse.FuseOSError(errno.EACCES)

        def mkdir(self, path, mode):
            raise fuse.FuseOSError(errno.EPERM)

        def unlink(self, path):
            raise fuse.FuseOSError(errno.EPERM)

        def rmdir(self, path):
            raise fuse.FuseOSError(errno.EPERM)

        def rename(self, old, new):
            raise fuse.FuseOSError(errno.EPERM)

        def symlink(self, target, source):
            raise fuse.FuseOSError(errno.EPERM)

        def link(self, target, source):
            raise fuse.FuseOSError(errno.EPERM)

        def chmod(self, path, mode):
            raise fuse.FuseOSError(errno.EPERM)

        def chown(self, path, uid, gid):
            raise fuse.FuseOSError(errno.EPERM)

        # ---- the store log ---------------------------------------------------------------
        def _cap_in_force(self, path: str) -> int | None:
            directory = path.rsplit("/", 1)[0]
            if directory.endswith("/userspace"):
                directory = directory.rsplit("/", 1)[0]
            return self.kernel.thermal_cap_of(directory)

        def _log_store(self, path: str, value: str, err: int, cap: int | None) -> None:
            attr = path.rsplit("/", 1)[-1]
            above = False
            if cap is not None and attr in _FREQ_ATTRS:
                try:
                    above = int(value.strip()) > cap
                except ValueError:
                    pass
            self._log.write(json.dumps({"t_ns": time.monotonic_ns(), "path": path, "value": value.strip(),
                                        "errno": err, "cap": cap, "above_cap": above}) + "\n")

    return VirtualSysfs()


def serve(root: str | Path, mountpoint: str | Path, store_log: str | Path | None = None) -> None:
    """Mount ``root``'s virtual kernel at ``mountpoint`` and serve until SIGINT/SIGTERM (libfuse
    handles both: it leaves its loop and unmounts). Blocks; run it in a process of its own."""
    reason = fuse_unavailable()
    if reason:
        raise FuseUnavailable(reason)
    fuse = _fuse_module()
    ops = _make_operations(Path(root).resolve(), Path(store_log) if store_log else None)
    # names and modes are cached by the kernel for a second, as sysfs's dentries are (each uncached
    # lookup is a round trip through this process: ~2 ms per store without, 0.9 ms with); a
    # name that went (``userspace/`` after a governor change) still fails at open. Contents are
    # never cached (direct_io): every read reaches the kernel model
    options = {"foreground": True, "nothreads": True, "direct_io": True, "default_permissions": True,
               "attr_timeout": 1.0, "entry_timeout": 1.0, "negative_timeout": 0, "fsname": "virtual-sysfs"}
    if os.geteuid() == 0:
        options["allow_other"] = True  # the tree's modes apply to every user, as on /sys
    try:
        fuse.FUSE(ops, str(mountpoint), **options)
    except RuntimeError:
        # libfuse 3 ends its loop on SIGINT/SIGTERM with a non-zero status after unmounting; only a
        # failure before serving (the mount itself) is an error
        if not ops.started:
            raise FuseUnavailable(f"could not mount the virtual board at {mountpoint}") from None


def is_mounted(mountpoint: str | Path) -> bool:
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == target for line in f if len(line.split()) > 2)
    except OSError:
        return os.path.ismount(target)


def unmount(mountpoint: str | Path) -> None:
    """Detach a mount left behind (its server died): fusermount when there is one, else umount."""
    for cmd in (["fusermount3", "-u", "-z"], ["fusermount", "-u", "-z"], ["umount", "-l"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, str(mountpoint)], capture_output=True).returncode == 0:
            return


@contextmanager
def mounted(root: str | Path, mountpoint: str | Path | None = None,
            store_log: str | Path | None = None) -> Iterator[Path]:
    """The virtual board at ``root`` mounted (by a child process) for the duration of the block.

    Raises ``FuseUnavailable`` (with the reason) where FUSE cannot work; the caller decides whether
    to fall back to the in-process hook. The mount is gone when the block ends, even on errors."""
    reason = fuse_unavailable()
    if reason:
        raise FuseUnavailable(reason)
    made = mountpoint is None
    mp = Path(tempfile.mkdtemp(prefix="vsysfs-")) if made else Path(mountpoint)
    mp.mkdir(parents=True, exist_ok=True)
    errlog = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "sysfs_backends.virtual.fuse_mount", str(root), str(mp)]
    if store_log:
        cmd += ["--store-log", str(store_log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errlog, start_new_session=True)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not is_mounted(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                errlog.seek(0)
                why = errlog.read().decode(errors="replace").strip().splitlines()
                last = why[-1] if why else f"no mount after {MOUNT_TIMEOUT_S:.0f} s"
                raise FuseUnavailable(f"mounting the virtual board at {mp} failed: {last}")
            time.sleep(0.02)
        yield mp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if is_mounted(mp):
            unmount(mp)
        errlog.close()
        if made:
            try:
                mp.rmdir()
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve a virtual board's tree as a FUSE file system")
    parser.add_argument("root")
    parser.add_argument("mountpoint")
    parser.add_argument("--store-log")
    args = parser.parse_args(argv)
    try:
        serve(args.root, args.mountpoint, args.store_log)
    except (FuseUnavailable, FileNotFoundError) as exc:
        print(f"virtual-mount: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
