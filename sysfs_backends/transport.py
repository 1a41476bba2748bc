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
                        fd = os.open(self._local(op.path), os.O_RDONLY)
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
                        fd = os.open(self._local(op.path), os.O_WRONLY | os.O_TRUNC)
                        try:
                            os.write(fd, op.value.encode())
                        finally:
                            os.close(fd)
                    results.append(OpResult(op, ok=True))
            except OSError as exc:
                results.append(OpResult(op, ok=False, errno=exc.errno or errno.EIO))
                failed = isinstance(op, Write)
        return results

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._local(path)))
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(self._local(path))
