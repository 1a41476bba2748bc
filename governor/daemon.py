"""The governor daemon: serves the socket protocol on a Unix socket until SIGTERM/SIGINT.

One asyncio loop: requests from all clients are handled one at a time, in arrival order per
connection, so decisions never race each other. Lines longer than ``MAX_LINE_BYTES`` are answered
with an error and skipped; the connection stays usable. On the way out the original governors and
limits are restored and the socket is removed.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import signal
import socket
import stat
import struct
from pathlib import Path

from governor.core import Governor, GovernorError
from governor.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    AfterFrame,
    BeforeFrame,
    ProtocolError,
    encode,
    error,
    parse_request,
)

log = logging.getLogger(__name__)


class SocketInUse(RuntimeError):
    pass


def _claim_socket(path: Path) -> None:
    """Refuse if a live daemon answers on ``path``; remove a stale socket file, and nothing else.

    A regular file, a directory, a symlink (even to a socket) or a socket we may not connect to
    at that path is not ours to delete: refuse with a message saying what is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
            else "a regular file" if stat.S_ISREG(st.st_mode) else None if stat.S_ISSOCK(st.st_mode)
            else "not a socket")
    if what is not None:
        raise SocketInUse(f"{path}: {what} is in the way of the governor's socket; it is not ours, so it is "
                          "left alone: remove it yourself or choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:  # nobody listens: a socket left by a killed run
        try:
            again = os.lstat(path)
        except FileNotFoundError:
            return
        if (again.st_ino, again.st_dev) == (st.st_ino, st.st_dev):
            os.unlink(path)
        return
    except OSError as exc:
        raise SocketInUse(f"{path}: a socket we cannot probe ({exc.strerror or exc}); it is left alone: "
                          "remove it yourself or choose another --socket") from None
    else:
        pid = _peer_pid(probe)
    finally:
        probe.close()
    who = f" (pid {pid})" if pid else ""
    raise SocketInUse(f"{path}: another governor{who} is already serving this socket")


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process listening on a connected Unix socket (SO_PEERCRED), if known."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0] or None
    except (OSError, AttributeError):
        return None


def _socket_gid(group: str | None) -> int:
    """The group id the socket is given (-1: leave the daemon's own group)."""
    if group is None:
        return -1
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"socket_group {group!r}: no such group on this system") from None


def _make_socket_folder(path: Path) -> None:
    """Create the socket's missing folders 0755 whatever the umask (root's is often 077): apps of
    socket_group must be able to reach the socket; the socket's own mode decides who connects."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in missing:
            os.chmod(folder, 0o755)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the socket's folder {path.parent}: {exc.strerror}",
                      str(path)) from None


def _set_socket_permissions(path: Path, mode: int, gid: int) -> None:
    """Give the socket its group and mode, so that apps of that group connect without root."""
    if gid != -1:
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot give the socket to group id {gid}: {exc.strerror} (the daemon "
                          "must run as root or as a member of socket_group)", str(path)) from None
    os.chmod(path, mode)


class Daemon:
    def __init__(self, governor: Governor, socket_path: str | Path, socket_mode: int = 0o660,
                 socket_group: str | None = None) -> None:
        self.governor = governor
        self.socket_path = Path(socket_path)
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self._stop: asyncio.Event | None = None

    def handle(self, line: bytes) -> dict:
        try:
            req = parse_request(line)
            if isinstance(req, BeforeFrame):
                d = self.governor.before_frame(req.model, req.deadline_ms, req.context_len, req.app)
                out = {"ok": True, "frame": d.frame, "cpu_khz": d.cpu_khz, "gpu_hz": d.gpu_hz,
                       "predicted_ms": d.predicted_ms, "feasible": d.feasible}
                if d.notes:
                    out["notes"] = list(d.notes)
                return out
            if isinstance(req, AfterFrame):
                self.governor.after_frame(req.frame, req.latency_ms)
                return {"ok": True}
            return {"ok": True, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                    **self.governor.status()}
        except (ProtocolError, GovernorError) as exc:
            return error(exc.code, str(exc))
        except OSError as exc:  # the backend could not write: report, keep serving
            log.error("backend: %s", exc)
            return error("backend_error", str(exc))
        except Exception as exc:  # never let one request take the daemon down
            log.exception("internal error")
            return error("internal", f"{type(exc).__name__}: {exc}")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        discarding = False
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_LINE_BYTES:
                            if not discarding:
                                writer.write(encode(error(
                                    "line_too_long", f"a request line is at most {MAX_LINE_BYTES} bytes")))
                                discarding = True
                            buf = b""
                        break
                    line, buf = buf[:nl], buf[nl + 1:]
                    if discarding:  # the tail of an over-long line
                        discarding = False
                        continue
                    if len(line) > MAX_LINE_BYTES:
                        writer.write(encode(error(
                            "line_too_long", f"a request line is at most {MAX_LINE_BYTES} bytes")))
                        continue
                    if not line.strip():
                        continue
                    writer.write(encode(self.handle(line)))
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        gid = _socket_gid(self.socket_group)
        _claim_socket(self.socket_path)
        _make_socket_folder(self.socket_path)
        # created with no more than socket_mode allows, so it is never looser, even for an instant
        old_umask = os.umask(0o777 & ~self.socket_mode)
        try:
            server = await asyncio.start_unix_server(self._client, path=str(self.socket_path))
        finally:
            os.umask(old_umask)
        try:
            _set_socket_permissions(self.socket_path, self.socket_mode, gid)
        except OSError:
            server.close()
            self.socket_path.unlink(missing_ok=True)
            raise
        ours = os.lstat(self.socket_path)
        log.info("serving %s", self.socket_path)
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            try:  # only the socket we made: something else may have taken the name since
                now = os.lstat(self.socket_path)
                if (now.st_ino, now.st_dev) == (ours.st_ino, ours.st_dev):
                    self.socket_path.unlink()
            except FileNotFoundError:
                pass
            log.info("stopping")

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def run_daemon(governor: Governor, socket_path: str | Path, socket_mode: int = 0o660,
               socket_group: str | None = None) -> None:
    """Start the governor, serve until a signal, and always restore the original settings."""
    governor.start()
    try:
        asyncio.run(Daemon(governor, socket_path, socket_mode, socket_group).serve())
    finally:
        for line in governor.stop():
            log.info("restored %s", line)
