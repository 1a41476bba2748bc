"""Client library for apps: talk to the governor daemon over its Unix socket.

    from governor.client import GovernorClient

    with GovernorClient("/tmp/deadline-dvfs.sock") as gov:
        with gov.frame("yolo_tiny", deadline_ms=33.3, app="camera") as decision:
            run_inference()

One connection per client, kept open; requests are answered in order.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class GovernorClientError(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class GovernorClient:
    def __init__(self, socket_path: str, timeout_s: float = 5.0, app: str | None = None) -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        self._sock.connect(str(socket_path))
        self._reader = self._sock.makefile("rb")

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        line = self._reader.readline()
        if not line:
            raise ConnectionError("the governor closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise GovernorClientError(reply.get("error", "unknown"), reply.get("message", ""))
        return reply

    def before_frame(self, model: str, deadline_ms: float, context_len: int | None = None,
                     app: str | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"op": "before_frame", "model": model, "deadline_ms": deadline_ms}
        if context_len is not None:
            msg["context_len"] = context_len
        if app or self.app:
            msg["app"] = app or self.app
        return self.request(msg)

    def after_frame(self, frame: int, latency_ms: float) -> None:
        self.request({"op": "after_frame", "frame": frame, "latency_ms": latency_ms})

    def status(self) -> dict[str, Any]:
        return self.request({"op": "status"})

    @contextmanager
    def frame(self, model: str, deadline_ms: float, context_len: int | None = None,
              app: str | None = None) -> Iterator[dict[str, Any]]:
        """Ask before the block, measure it, report after it."""
        decision = self.before_frame(model, deadline_ms, context_len, app)
        t0 = time.perf_counter()
        try:
            yield decision
        finally:
            self.after_frame(decision["frame"], (time.perf_counter() - t0) * 1e3)

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> GovernorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
