"""How sysfs reads and writes reach a device: the only thing Linux and Android backends differ in.

A transport executes a *batch* of operations in order and reports, per operation, what happened.
The local transport uses the file system; the ADB transport (sysfs_backends/android.py) turns the
same batch into one shell command, so a frequency change costs one round trip to the phone.
A batch stops at the first failed write: later writes may depend on it (min before max), and
what did succeed is known exactly, so it can be undone.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Read:
    path: str  # absolute sysfs path, e.g. /sys/class/devfreq/x/cur_freq


@dataclass(frozen=True)
class Write:
    path: str
    value: str


Op = Read | Write


@dataclass(frozen=True)
class OpResult:
    op: Op
    ok: bool
    value: str | None = None  # what a read returned (stripped)
    errno: int | None = None  # why it failed
    skipped: bool = False  # not attempted: an earlier write in the batch failed


class SysfsIOError(OSError):
    """A sysfs read or write refused; the message names the file and the value."""

    def __init__(self, err: int, path: str, value: str | None = None, detail: str = "") -> None:
        name = errno.errorcode.get(err, str(err))
        meaning = {
            errno.EINVAL: "the kernel refused the value (not allowed in this state)",
            errno.EBUSY: "the device is busy; try again",
            errno.EACCES: "permission denied (not root, read-only attribute, or SELinux)",
            errno.EPERM: "operation not permitted (needs root)",
            errno.ENOENT: "no such file (not exposed by this kernel or governor)",
        }.get(err, os.strerror(err))
        what = f"writing {value!r} to {path}" if value is not None else f"reading {path}"
        super().__init__(err, f"{what}: {name}: {meaning}{'; ' + detail if detail else ''}")
        self.path = path
        self.value = value


class Transport(Protocol):
    def run(self, ops: list[Op]) -> list[OpResult]: ...

    def listdir(self, path: str) -> list[str]: ...

    def exists(self, path: str) -> bool: ...

    @property
    def round_trips(self) -> int: ...


class WriteHook(Protocol):
    """Receives local reads and writes instead of the file system (the virtual board's kernel),
    as a real attribute's ``show``/``store`` functions do."""

    def read(self, path: str) -> str: ...

    def write(self, path: str, value: str) -> None: ...


class LocalTransport:
    """Files under ``root`` (``/`` on a real board; a tmp tree for the virtual board and tests)."""

    def __init__(self, root: str | Path = "/", hook: WriteHook | None = None) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self.hook = hook
        self.round_trips = 0
        self.writes = 0
        self._dirs: dict[str, int] = {}  # directory in the tree -> fd (see _open_attr)

    def _local(self, path: str) -> str:
        return os.path.join(self._root, path.lstrip("/"))

    def run(self, ops: list[Op]) -> list[OpResult]:
        self.round_trips += 1
        results: list[OpResult] = []
        failed = False
        for op in ops:
            if failed:
                results.append(OpResult(op, ok=False, skipped=True))
                continue
            try:
                if isinstance(op, Read):
                    if self.hook is not None:
                        value = self.hook.read(op.path).strip()
                    else:
                        fd = os.open(self._local(op.path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                        try:
                            value = os.read(fd, 65536).decode().strip()
                        finally:
                            os.close(fd)
                    results.append(OpResult(op, ok=True, value=value))
                else:
                    self.writes += 1
                    if self.hook is not None:
                        self.hook.write(op.path, op.value)
                    else:  # one open + one write(2), as `echo v > attr` does
                        fd = self._open_attr(op.path)
                        try:
                            os.write(fd, op.value.encode())
                        finally:
                            os.close(fd)
                    results.append(OpResult(op, ok=True))
            except OSError as exc:
                results.append(OpResult(op, ok=False, errno=exc.errno or errno.EIO))
                failed = isinstance(op, Write)
        return results

    def _dir_fd(self, directory: str) -> int:
        """A directory fd reached from the root without following any symlink (cached)."""
        fd = self._dirs.get(directory)
        if fd is not None:
            return fd
        parts = [p for p in directory.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise OSError(errno.EINVAL, "not a plain path", directory)
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except OSError:
            os.close(fd)
            raise
        self._dirs[directory] = fd
        return fd

    def _open_attr(self, path: str) -> int:
        """Open an attribute for writing with no symlink anywhere on the way (O_NOFOLLOW on every
        component below the root): a planted link can never redirect a write out of the tree.
        Discovery hands us paths already resolved (``resolve_dir``)."""
        directory, name = path.rsplit("/", 1)
        flags = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        cached = directory in self._dirs
        try:
            return os.open(name, flags, dir_fd=self._dir_fd(directory))
        except (FileNotFoundError, NotADirectoryError):
            if not cached:
                raise
            # the directory was removed and made again (devfreq's userspace/): walk afresh
            os.close(self._dirs.pop(directory))
            return os.open(name, flags, dir_fd=self._dir_fd(directory))

    def resolve_dir(self, path: str) -> tuple[str, str]:
        """``path`` with every symlink resolved, as a path in the tree (``/sys/...``; it starts
        with ``/..`` if it leaves the tree), and the real path on this machine, for messages."""
        real = os.path.realpath(self._local(path))
        root = os.path.realpath(self._root)
        if not os.path.isdir(real):
            raise OSError(errno.ENOTDIR if os.path.exists(real) else errno.ENOENT, "not a directory", path)
        rel = os.path.relpath(real, root)
        return ("/" if rel == "." else "/" + rel), real

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def __del__(self) -> None:
        for fd in getattr(self, "_dirs", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._local(path)))
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(self._local(path))
