"""Client library for apps: talk to the governor daemon over its Unix socket.

    from governor.client import GovernorClient

    with GovernorClient("/tmp/deadline-dvfs.sock") as gov:
        with gov.frame("yolo_tiny", deadline_ms=33.3, app="camera") as decision:
            run_inference()

One connection per client, kept open; requests are answered in order.

The governor is an optimisation, never a dependency of the app's work: if the daemon goes away
(restarted, killed, upgraded) ``frame()`` keeps running the block, warns once, and reconnects with
back-off in the background of later frames. Only the constructor insists on a daemon being there,
so a misconfigured socket path is found at start, not as silently ungoverned frames.
"""

from __future__ import annotations

import json
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0


class GovernorClientError(RuntimeError):
    """The daemon answered with an error (``code`` is the protocol's error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class GovernorUnavailable(ConnectionError):
    """No daemon answers on the socket (never started, gone, or not ours to reach)."""


class GovernorClient:
    def __init__(self, socket_path: str, timeout_s: float = 5.0, app: str | None = None) -> None:
        self.app = app
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader = None
        self._retry_at = 0.0
        self._backoff_s = RECONNECT_FIRST_S
        self._warned = False
        self._unread = 0  # replies to reports sent without waiting (after_frame(wait=False)), in order
        self._connect()

    # ---- connection -----------------------------------------------------------------------
    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or type(exc).__name__
            raise GovernorUnavailable(
                f"no governor daemon answers on {self.socket_path} ({reason}); start one with "
                "`dvfs-gov run --config <governor.yaml>` (or pass that config's `socket:` path)") from None
        self._sock, self._reader = sock, sock.makefile("rb")
        self._backoff_s = RECONNECT_FIRST_S
        self._unread = 0

    def _drop(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _ensure_connected(self) -> None:
        """Reconnect if the back-off allows; GovernorUnavailable while it does not (or fails)."""
        if self._sock is not None:
            return
        now = time.monotonic()
        if now < self._retry_at:
            raise GovernorUnavailable(f"the governor on {self.socket_path} is away; retrying in "
                                      f"{self._retry_at - now:.1f} s")
        try:
            self._connect()
        except GovernorUnavailable:
            self._retry_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, RECONNECT_MAX_S)
            raise
        if self._warned:
            warnings.warn(f"reconnected to the governor on {self.socket_path}", RuntimeWarning, stacklevel=4)
            self._warned = False

    def request(self, msg: dict[str, Any], wait: bool = True) -> dict[str, Any] | None:
        """One request, one reply. GovernorUnavailable when the daemon cannot be reached (the
        connection is dropped and retried later), GovernorClientError when it answers an error.

        ``wait=False``: send it and return None; its reply (replies come in order) is read before
        the next request's. Meant for reports: the app does not wait a round trip after its frame,
        and the daemon's reply finds no process blocked on it to wake."""
        self._ensure_connected()
        try:
            self._sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
            if not wait:
                self._unread += 1
                return None
            while self._unread:
                self._unread -= 1
                self._check_report(self._read_reply())
            reply = self._read_reply()
        except (OSError, ValueError) as exc:  # broken pipe, reset, timeout, a torn reply
            self._drop()
            self._retry_at = time.monotonic()  # the first retry is immediate, then back-off
            raise GovernorUnavailable(f"lost the governor on {self.socket_path}: "
                                      f"{getattr(exc, 'strerror', None) or exc}") from None
        if not reply.get("ok"):
            raise GovernorClientError(reply.get("error", "unknown"), reply.get("message", ""))
        return reply

    def _read_reply(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise ConnectionResetError("the governor closed the connection")
        # the daemon's replies are UTF-8 objects: decoding here skips json's encoding detection
        return json.loads(line.decode("utf-8", "surrogatepass") if line[:2] == b'{"' else line)

    @staticmethod
    def _check_report(reply: dict[str, Any]) -> None:
        """The reply to a report sent without waiting. Its frame is over: an error is warned about,
        not raised into the next request (unknown_frame, a frame that expired or a daemon that
        restarted meanwhile, is expected and silent)."""
        if not reply.get("ok") and reply.get("error") != "unknown_frame":
            warnings.warn(f"the governor refused a frame report: {reply.get('error')}: {reply.get('message')}",
                          RuntimeWarning, stacklevel=4)

    # ---- the protocol ---------------------------------------------------------------------
    def before_frame(self, model: str, deadline_ms: float, context_len: int | None = None,
                     app: str | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"op": "before_frame", "model": model, "deadline_ms": deadline_ms}
        if context_len is not None:
            msg["context_len"] = context_len
        if app or self.app:
            msg["app"] = app or self.app
        return self.request(msg)

    def after_frame(self, frame: int, latency_ms: float | None = None, failed: bool = False,
                    wait: bool = True) -> dict[str, Any] | None:
        """Report a frame's measured latency, or ``failed=True`` for a frame whose inference
        failed (counted by the daemon, never used as a latency). ``wait=False``: do not wait for
        the reply (None is returned; an error in it is warned about at the next request)."""
        msg: dict[str, Any] = {"op": "after_frame", "frame": frame}
        if failed:
            msg["failed"] = True
        if latency_ms is not None:
            msg["latency_ms"] = latency_ms
        return self.request(msg, wait=wait)

    def status(self) -> dict[str, Any]:
        return self.request({"op": "status"})

    def _warn_away(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"{exc}; frames run without frequency control until it is back "
                          "(reconnecting with back-off)", RuntimeWarning, stacklevel=4)

    @contextmanager
    def frame(self, model: str, deadline_ms: float, context_len: int | None = None,
              app: str | None = None) -> Iterator[dict[str, Any]]:
        """Ask before the block, measure it, report after it. The block always runs: while the
        daemon is away the decision is ``{"ok": False, "governed": False}`` (warned once). A block
        that raises is reported as a failed frame and the exception goes on."""
        try:
            decision = self.before_frame(model, deadline_ms, context_len, app)
        except GovernorUnavailable as exc:
            self._warn_away(exc)
            decision = {"ok": False, "governed": False, "reason": str(exc)}
        t0 = time.perf_counter()
        try:
            yield decision
        except BaseException:
            self._report(decision, None, failed=True)
            raise
        self._report(decision, (time.perf_counter() - t0) * 1e3)

    def _report(self, decision: dict[str, Any], latency_ms: float | None, failed: bool = False) -> None:
        if "frame" not in decision or not self.connected:
            return
        try:  # the frame is over: its reply is read (and checked) before the next request's
            self.after_frame(decision["frame"], latency_ms, failed=failed, wait=False)
        except GovernorUnavailable as exc:
            self._warn_away(exc)

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> GovernorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_daemon(path: str | Path, proc, timeout_s: float = 60.0) -> None:
    """Wait until the daemon started as ``proc`` (a subprocess.Popen) answers on ``path``; raise
    RuntimeError, with what it printed on stderr where that was captured, if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = proc.stderr.read().strip()[-400:] if getattr(proc, "stderr", None) else ""
            raise RuntimeError(f"the governor daemon exited early (status {proc.returncode})"
                               + (f": {said}" if said else ""))
        if Path(path).exists():
            try:
                GovernorClient(str(path)).close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError("the governor daemon did not open its socket in time")
