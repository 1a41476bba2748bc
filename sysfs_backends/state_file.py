"""The state file and the ownership of a board: what to put back after a crash, and who may.

A governor that writes to a board first records the original settings in a state file, so that
``dvfs-gov restore`` (or the next start) can put them back after a SIGKILL or a power cut. Two
things make that safe:

* **One owner per board.** The owner holds an ``flock`` on ``<state file>.lock`` for as long as it
  lives; the kernel drops the lock when the process dies, however it dies (SIGKILL included). So a
  lock that can be taken means the state file's writer is gone and its originals may be restored;
  a lock that cannot means a live governor owns the board, and nobody else touches the board or its
  state file. The lock file records the owner's pid, for the message.
* **Nothing outside what we own.** The state file, its ``.tmp`` and the lock file are opened with
  ``O_NOFOLLOW`` (and the ``.tmp`` with ``O_EXCL``), so a planted symlink at any of these paths
  never makes us write to its target.

A damaged state file (empty, truncated, not JSON, NaN, an unknown domain, min above max, another
board's) is reported with the file and what is wrong; its values are never adopted as originals.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sysfs_backends.base import BackendError

FORMAT = "deadline-dvfs.saved/1"
MAX_STATE_BYTES = 64 * 1024  # a state file is a few hundred bytes; more is not ours
KNOWN_DOMAINS = ("cpu", "gpu", "mem")


class StateFileError(BackendError):
    """The state file cannot be used as it is; the message names the file and what is wrong."""


class BoardBusy(BackendError):
    """Another live governor owns the board; the message names its pid."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class RestoreIncomplete(BackendError):
    """Some of a restore failed: every domain was attempted, the state file is kept."""

    def __init__(self, board: str, state_file: Path | None, done: list[str], failures: list[str]) -> None:
        kept = (f"; the state file {state_file} is kept: fix the cause and run `dvfs-gov restore` again"
                if state_file else "")
        super().__init__(f"board {board!r}: restore incomplete ({len(failures)} failure(s)): "
                         + "; ".join(failures) + kept)
        self.done = done
        self.failures = failures


class SavedDomain(BaseModel):
    """One domain's original settings. ``setpoint`` is the userspace governor's target
    (``scaling_setspeed``/``userspace/set_freq``), kept only when that was the original governor,
    because the kernel keeps it as part of that governor's state.

    A Jetson BPMP clock (``kind: bpmp_emc``) is saved in the same fields: ``governor`` is
    ``locked`` or ``bpmp`` (``mrq_rate_locked`` 1 or 0), ``setpoint`` the ``rate`` running, and
    min/max the ``min_rate``/``max_rate`` the firmware showed (recorded, never written).
    ``kind`` (added with the memory domain; absent in older state files, which stay valid) says
    how the domain was driven, so a file is never applied to a domain of another kind."""

    model_config = ConfigDict(extra="forbid", strict=True)
    governor: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    min: int = Field(gt=0)
    max: int = Field(gt=0)
    setpoint: int | None = Field(None, gt=0)
    kind: Literal["cpufreq", "devfreq", "kgsl", "mali", "bpmp_emc"] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> SavedDomain:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max} (swapped or damaged)")
        return self


class SavedState(BaseModel):
    """The state file: what to put back, even after a crash (``dvfs-gov restore``).

    ``target`` says which board the file belongs to (the resolved sysfs root, or the phone's ADB
    address), so a file copied or configured for another board is refused, not applied."""

    model_config = ConfigDict(extra="forbid")
    format: str = FORMAT
    board: str
    backend: str
    target: str | None = None
    pid: int
    domains: dict[str, SavedDomain]

    @model_validator(mode="after")
    def _known(self) -> SavedState:
        if self.format != FORMAT:
            raise ValueError(f"format is {self.format!r}, expected {FORMAT!r}")
        unknown = sorted(set(self.domains) - set(KNOWN_DOMAINS))
        if unknown:
            raise ValueError(f"unknown domain(s) {', '.join(unknown)} (allowed: {', '.join(KNOWN_DOMAINS)})")
        if not self.domains:
            raise ValueError("no domains")
        return self


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_state(path: Path) -> SavedState | None:
    """The state file at ``path``, or None if there is none; StateFileError if it is damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateFileError(f"{path}: is a symbolic link, not a state file we wrote; refusing to "
                                 "follow it (remove it if you did not put it there)") from None
        raise StateFileError(f"{path}: cannot read the state file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(f"{path}: is not a regular file; refusing to use it as the state file")
        data = os.read(fd, MAX_STATE_BYTES + 1)
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read the state file: {exc.strerror}") from None
    finally:
        os.close(fd)
    hint = ("its values are not used as originals; `dvfs-gov restore --defaults` puts the board back "
            "to the kernel's defaults and removes it")
    if not data.strip():
        raise StateFileError(f"{path}: the state file is empty (a run was killed while writing it?); {hint}")
    if len(data) > MAX_STATE_BYTES:
        raise StateFileError(f"{path}: the state file is larger than {MAX_STATE_BYTES} bytes; {hint}")
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise StateFileError(f"{path}: the state file is not text (garbage bytes); {hint}") from None
    except ValueError as exc:
        raise StateFileError(f"{path}: the state file is not valid JSON ({exc}); {hint}") from None
    if not isinstance(raw, dict):
        raise StateFileError(f"{path}: the state file is not a JSON object; {hint}")
    try:
        return SavedState.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise StateFileError(f"{path}: field {where}: {first['msg']}; {hint}") from None


def _open_new(path: Path) -> int:
    """Create ``path`` for writing, never through a symlink and never into an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        # a .tmp left by a run killed mid-write, or something planted: take the name back
        # (unlinking a symlink removes the link, never its target)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise StateFileError(f"{path}: is a directory; cannot write the state file beside it") from None
        os.unlink(path)
        return os.open(path, flags, 0o600)


def write_state(path: Path, state: SavedState) -> None:
    """Write the state file atomically (``.tmp`` + fsync + rename) without following symlinks."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = _open_new(tmp)
        try:
            os.write(fd, state.model_dump_json(indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            os.unlink(tmp)
            raise StateFileError(f"{path}: is not a regular file (symlink, directory, ...); refusing to "
                                 "replace it with the state file")
        os.replace(tmp, path)  # rename(2) replaces the name itself, never a symlink's target
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise StateFileError(f"{path}: cannot write the state file ({exc.strerror}); nothing was changed "
                             "on the board; choose a writable place with --state-file or backend.state_file"
                             ) from None


def remove_state(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def lock_path(state_file: Path) -> Path:
    return state_file.with_name(state_file.name + ".lock")


class _Lock:
    """One flock'ed lock file (see the module docstring)."""

    def __init__(self, path: Path, required: bool) -> None:
        self.path = path
        self.required = required  # False: skipped where its directory cannot be written
        self.fd: int | None = None

    def owner(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _recorded_pid(fd) or -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self, what: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            if not self.required:
                return
            raise StateFileError(f"{self.path.parent}: cannot create the state directory ({exc.strerror}); "
                                 "choose a writable place with --state-file or backend.state_file") from None
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StateFileError(f"{self.path}: the lock file is a symbolic link; refusing to follow "
                                         "it (remove it if you did not put it there)") from None
                if not self.required and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return
                raise StateFileError(f"{self.path}: cannot open the lock file ({exc.strerror}); choose a "
                                     "writable place with --state-file or backend.state_file") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _recorded_pid(fd)
                os.close(fd)
                who = ("this process (another backend opened on the same board)" if pid == os.getpid()
                       else f"pid {pid}" if pid else "another process")
                raise BoardBusy(
                    f"board {what} is owned by a running governor ({who}; lock {self.path}); it restores "
                    f"the board itself when it stops: stop it first (kill -TERM {pid or '<pid>'})"
                    + ("" if pid == os.getpid() else
                       ", or use `dvfs-gov restore --force` to restore under it"), pid) from None
            # the lock file may have been unlinked by an owner releasing it between our open and
            # flock: then we hold a lock on a name nobody else can find; try again
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return
            os.close(fd)
        raise StateFileError(f"{self.path}: the lock file keeps changing; is another tool removing it?")

    def release(self) -> None:
        """The name goes first, then the lock (see ``acquire``)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)

    def __del__(self) -> None:  # an owner dropped without close(): give the board back
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _recorded_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class Ownership:
    """The flocks that make one process the owner of a board: one beside the state file, and
    one per board (``board_lock``: keyed by the board's tree or phone, in the default state
    directory) so that runs configured with different state files still exclude each other."""

    def __init__(self, state_file: Path, board_lock: Path | None = None) -> None:
        self.path = lock_path(state_file)
        self._locks = [_Lock(self.path, required=True)]
        if board_lock is not None and board_lock != self.path:
            self._locks.append(_Lock(board_lock, required=False))

    @property
    def held(self) -> bool:
        return self._locks[0].fd is not None

    def owner(self) -> int | None:
        """The pid of a live owner other than us (-1 if unknown), or None if nobody else owns it."""
        if self.held:
            return None
        for lock in self._locks:
            pid = lock.owner()
            if pid is not None:
                return pid
        return None

    def acquire(self, what: str) -> None:
        """Become the owner, or raise BoardBusy naming the owner's pid. Idempotent."""
        if self.held:
            return
        try:
            for lock in self._locks:
                lock.acquire(what)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
