"""Android backend: a rooted phone's cpufreq/devfreq/kgsl/Mali nodes over ADB (pure Python).

Same sysfs logic as the Linux backend (sysfs_backends/sysfs.py); only the transport differs: a
batch of reads and writes becomes ONE shell command, so a frequency change costs one round trip.
Its output is parsed strictly: every operation prints one tagged line, a failed write stops the
batch, and what ran before it is known exactly (so it can be undone).

Connection: TCP ``host:port`` or a USB serial (with ``adb-shell[usb]``), authenticated with an RSA
key created on first use in the user's config dir (like adb's ``~/.android/adbkey``). Root: if the
shell is not uid 0, writes go through ``su -c``; a missing or denying ``su`` and SELinux refusals
are reported as such. A dropped connection is retried in the background with backoff; meanwhile
the backend raises ``BackendUnavailable`` at once instead of blocking the governor.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from pathlib import Path

from dvfs_schema.board import BoardConfig
from sysfs_backends.base import BackendUnavailable
from sysfs_backends.lifecycle import signals_held
from sysfs_backends.sysfs import BackendError, SysfsBackend, board_lock_path, saved_state_path
from sysfs_backends.transport import Op, OpResult, Read, Write

log = logging.getLogger(__name__)
TAG = "@@dvfs"
# what a phone's shell prints for a failed write -> errno
MESSAGES = {
    "Invalid argument": errno.EINVAL,
    "Device or resource busy": errno.EBUSY,
    "Permission denied": errno.EACCES,
    "Operation not permitted": errno.EPERM,
    "No such file or directory": errno.ENOENT,
    "Read-only file system": errno.EROFS,
    "nonexistent directory": errno.ENOENT,
    "I/O error": errno.EIO,
    "symbolic link": errno.ELOOP,
}
PRELUDE = (
    # r INDEX PATH: print the value; w INDEX PATH VALUE: write, print the error and stop on failure.
    # A write never goes through a symbolic link (sysfs attributes are never links: one planted
    # there would lead the write out of the domain).
    f'r() {{ v=$(cat "$2" 2>&1) && echo "{TAG} $1 R0 $v" || echo "{TAG} $1 R1 $v"; }}\n'
    f'w() {{ [ -L "$2" ] && {{ echo "{TAG} $1 W1 $2: is a symbolic link"; exit 0; }}; '
    f'e=$( {{ echo "$3" > "$2"; }} 2>&1 ) && echo "{TAG} $1 W0" || {{ echo "{TAG} $1 W1 $e"; exit 0; }}; }}\n'
)
SAFE = re.compile(r"^[A-Za-z0-9_./,:+-]+$")


def default_key_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "deadline-dvfs" / "adbkey"


ROOT_ONLY = ("/cpuinfo_cur_freq",)  # attributes the kernel lets only root read (mode 0400)
DEBUGFS = "/sys/kernel/debug/"  # root-only as a whole (the BPMP clock interface lives there)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


class AdbTransport:
    """Runs batches as one `shell:` command over adb-shell, with reconnection."""

    def __init__(self, address: str | None = None, serial: str | None = None,
                 key_path: str | Path | None = None, connect_timeout_s: float = 10.0,
                 command_timeout_s: float = 10.0) -> None:
        if not address and not serial:
            raise BackendError("the android backend needs adb.address (host:port) or adb.serial (USB)")
        self.address, self.serial = address, serial
        self.key_path = Path(key_path) if key_path else default_key_path()
        self.connect_timeout_s, self.command_timeout_s = connect_timeout_s, command_timeout_s
        self.round_trips = 0
        self.writes = 0
        self.generation = 0  # bumped on every (re)connection
        self._device = None
        self._root: bool | None = None
        self._lock = threading.Lock()
        self._reconnecting = False
        self.connected = False
        self.last_error: str | None = None
        self._connect()

    # ---- connection -------------------------------------------------------------------------
    def _signer(self):
        from adb_shell.auth.keygen import keygen
        from adb_shell.auth.sign_pythonrsa import PythonRSASigner

        if not self.key_path.exists():
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            keygen(str(self.key_path))
            os.chmod(self.key_path, 0o600)
            log.info("created ADB key %s (accept it on the phone the first time)", self.key_path)
        return PythonRSASigner.FromRSAKeyPath(str(self.key_path))

    def _connect(self) -> None:
        if self.serial:
            try:
                from adb_shell.adb_device import AdbDeviceUsb
            except ImportError:
                raise BackendError("ADB over USB needs `pip install adb-shell[usb]`") from None
            device = AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.command_timeout_s)
        else:
            from adb_shell.adb_device import AdbDeviceTcp

            host, _, port = self.address.rpartition(":")
            device = AdbDeviceTcp(host or self.address, int(port or 5555),
                                  default_transport_timeout_s=self.command_timeout_s)
        try:
            device.connect(rsa_keys=[self._signer()], auth_timeout_s=self.connect_timeout_s,
                           transport_timeout_s=self.connect_timeout_s, read_timeout_s=self.connect_timeout_s)
        except Exception as exc:  # adb-shell raises many kinds; all mean "not connected"
            self.connected = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise BackendUnavailable(f"cannot connect to {self.address or self.serial}: {self.last_error}") from None
        self._device = device
        self._no_delay(device)
        self._root = self._shell("id -u").strip() == "0"
        self.generation += 1
        self.connected = True
        self.last_error = None

    @staticmethod
    def _no_delay(device) -> None:
        """adb-shell writes a message's header and payload separately; without TCP_NODELAY,
        Nagle's algorithm holds the payload for the peer's delayed ACK (~40 ms per command)."""
        import socket

        conn = getattr(getattr(device, "_transport", None), "_connection", None)
        if isinstance(conn, socket.socket):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _shell(self, command: str) -> str:
        with signals_held():  # a first Ctrl-C waits for the answer, then stops us
            try:
                out = self._device.shell(command, timeout_s=self.command_timeout_s,
                                         read_timeout_s=self.command_timeout_s)
            except Exception as exc:
                self._lost(exc)
                raise BackendUnavailable(f"lost the phone: {type(exc).__name__}: {exc}") from None
            except BaseException:
                # a second Ctrl-C or SIGTERM in the middle of a command: its answer is still on
                # its way, so the next command on this connection would read it (the restore then
                # timed out). Drop the connection; the next batch (the restore) makes a new one
                self._drop("interrupted in the middle of a command")
                raise
            self.round_trips += 1
        return out

    def _drop(self, why: str) -> None:
        self.connected = False
        self.last_error = why
        try:
            self._device.close()
        except Exception:  # noqa: S110 - already broken
            pass

    def _lost(self, exc: Exception) -> None:
        self._drop(f"{type(exc).__name__}: {exc}")
        if not self._reconnecting:
            self._reconnecting = True
            threading.Thread(target=self._reconnect_loop, daemon=True).start()

    def _reconnect_loop(self) -> None:
        delay = 0.2
        while True:
            time.sleep(delay)
            try:
                with self._lock:
                    self._connect()
                log.warning("reconnected to %s", self.address or self.serial)
                break
            except (BackendUnavailable, BackendError):
                delay = min(delay * 2, 10.0)
        self._reconnecting = False

    def close(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            except Exception:  # noqa: S110
                pass
        self.connected = False

    # ---- batches ------------------------------------------------------------------------------
    def _script(self, ops: list[Op]) -> str:
        lines = [PRELUDE]
        for i, op in enumerate(ops):
            for part in (op.path, getattr(op, "value", "x")):
                if not SAFE.match(part):
                    raise BackendError(f"refusing to send an unsafe path or value to the shell: {part!r}")
            lines.append(f"r {i} {op.path}\n" if isinstance(op, Read) else f"w {i} {op.path} {op.value}\n")
        script = "".join(lines)
        privileged = any(isinstance(op, Write) or op.path.endswith(ROOT_ONLY) or op.path.startswith(DEBUGFS)
                         for op in ops)
        if privileged and not self._root:
            script = f"su -c {_quote(script)} || echo '{TAG} su-failed'"
        return script

    def run(self, ops: list[Op]) -> list[OpResult]:
        if not ops:
            return []
        with self._lock:
            if not self.connected and not self._reconnecting:
                self._connect()  # dropped without a loss (an interrupted command): connect again now
            if not self.connected:
                raise BackendUnavailable(f"phone not connected ({self.last_error}); reconnecting")
            out = self._shell(self._script(ops))
        self.writes += sum(isinstance(op, Write) for op in ops)
        return self._parse(ops, out)

    def _parse(self, ops: list[Op], out: str) -> list[OpResult]:
        results: dict[int, OpResult] = {}
        for line in out.splitlines():
            if not line.startswith(TAG):
                continue
            parts = line.split(" ", 3)
            if parts[1] == "su-failed" or len(parts) < 3:
                detail = "su is missing on the phone" if "not found" in out else "su refused (grant root to the shell)"
                raise PermissionError(errno.EPERM, f"cannot become root: {detail}")
            i, status, rest = int(parts[1]), parts[2], parts[3] if len(parts) > 3 else ""
            if not 0 <= i < len(ops) or i in results:
                raise BackendError(f"unexpected line from the phone's shell: {line!r}")
            op = ops[i]
            if status == "R0":
                results[i] = OpResult(op, ok=True, value=rest.strip())
            elif status == "W0":
                results[i] = OpResult(op, ok=True)
            elif status in ("R1", "W1"):
                code = next((v for k, v in MESSAGES.items() if k in rest), errno.EIO)
                detail = rest.strip()
                if code == errno.EACCES and isinstance(op, Write):
                    detail += self._selinux_hint()
                results[i] = OpResult(op, ok=False, errno=code, value=detail)
            else:
                raise BackendError(f"unexpected line from the phone's shell: {line!r}")
        failed_write = next((i for i in sorted(results)
                             if not results[i].ok and isinstance(ops[i], Write)), None)
        out_results = []
        for i, op in enumerate(ops):
            if i in results:
                out_results.append(results[i])
            elif failed_write is not None and i > failed_write:
                out_results.append(OpResult(op, ok=False, skipped=True))
            else:
                raise BackendError(f"the phone's shell did not report operation {i} ({op.path}); "
                                   f"output was {out[-300:]!r}")
        return out_results

    def _selinux_hint(self) -> str:
        """Root refused a write: say whether SELinux is enforcing (one extra round trip, on failure)."""
        try:
            mode = self._shell("getenforce 2>/dev/null").strip()
        except BackendUnavailable:
            return ""
        if mode == "Enforcing":
            return "; SELinux is Enforcing: the policy may forbid this write (see `adb shell dmesg | grep avc`)"
        return f"; SELinux: {mode or 'unknown'}"

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            out = self._shell(f"ls -1 {path} 2>/dev/null")
        return sorted(x for x in out.split() if x)

    def exists(self, path: str) -> bool:
        with self._lock:
            return self._shell(f"[ -e {path} ] && echo yes || echo no").strip() == "yes"


class AndroidBackend(SysfsBackend):
    name = "android"

    def __init__(self, board: BoardConfig, adb, state_file: str | Path | None = None) -> None:
        transport = AdbTransport(adb.address, adb.serial, adb.key_path, adb.connect_timeout_s,
                                 adb.command_timeout_s)
        super().__init__(board, transport,
                         state_file or saved_state_path(board.name, f"adb_{adb.address or adb.serial}", remote=True),
                         board_lock_path(f"adb_{adb.address or adb.serial}", remote=True))
        self.target = f"phone {adb.address or adb.serial}"

    @property
    def connected(self) -> bool:
        return self.transport.connected

    def close(self) -> None:
        self.release()
        self.transport.close()
