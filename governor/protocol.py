"""Socket protocol version 1 (docs/governor-protocol.md) as pydantic models.

Requests are validated strictly: a string where a number belongs is an error, not a guess.
Unknown extra fields are allowed and ignored, so newer clients work with this daemon. Hostile input
(nesting deep enough to exhaust the parser, numbers with thousands of digits, values outside every
sane range) is answered with ``bad_json``/``bad_field``, never ``internal``.

Speed: a daemon serving 32 apps at 120 fps parses ~8000 lines a second on a small board, so the two
per-frame requests, when plainly well formed, are checked by hand against the same bounds (a few
type and range tests, no pydantic) and only anything else goes through the models, which then give
the verdict and the error message. ``tests/test_protocol.py`` checks that the hand check never
accepts what the models refuse, nor reads a field differently. Replies to frames are formatted
directly for the same reason.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024
MAX_NAME_CHARS = 128
MAX_FRAME_ID = 2**63 - 1


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class BeforeFrame(_Request):
    op: Literal["before_frame"]
    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    deadline_ms: float = Field(gt=0, le=3_600_000)
    context_len: int | None = Field(None, ge=0, le=10_000_000)
    app: str = Field("default", min_length=1, max_length=MAX_NAME_CHARS)


class AfterFrame(_Request):
    """``failed: true`` reports a frame whose inference failed: counted, never used as a latency
    (``latency_ms`` may then be left out)."""

    op: Literal["after_frame"]
    frame: int = Field(ge=1, le=MAX_FRAME_ID)
    latency_ms: float | None = Field(None, ge=0, le=3_600_000)
    failed: bool = False

    @model_validator(mode="after")
    def _latency_unless_failed(self) -> AfterFrame:
        if self.latency_ms is None and not self.failed:
            raise ValueError("latency_ms is required (or failed: true)")
        return self


class Status(_Request):
    op: Literal["status"]


REQUESTS: dict[str, type[_Request]] = {"before_frame": BeforeFrame, "after_frame": AfterFrame,
                                       "status": Status}


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FastBeforeFrame(NamedTuple):
    """A ``before_frame`` that passed the hand check: the fields ``BeforeFrame`` would hold."""

    model: str
    deadline_ms: float
    context_len: int | None
    app: str
    op: str = "before_frame"


class FastAfterFrame(NamedTuple):
    """An ``after_frame`` that passed the hand check: the fields ``AfterFrame`` would hold."""

    frame: int
    latency_ms: float | None
    failed: bool
    op: str = "after_frame"


_NUMBER = (float, int)  # exactly: bool is not a number here, as in the strict models


def _name_ok(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_NAME_CHARS


def _fast(data: dict) -> FastBeforeFrame | FastAfterFrame | None:
    """The per-frame requests when plainly valid; None: let the models decide (and explain)."""
    op = data.get("op")
    if op == "before_frame":
        model, deadline = data.get("model"), data.get("deadline_ms")
        context_len, app = data.get("context_len"), data.get("app", "default")
        if (_name_ok(model) and type(deadline) in _NUMBER and 0 < deadline <= 3_600_000
                and (context_len is None or (type(context_len) is int and 0 <= context_len <= 10_000_000))
                and _name_ok(app)):
            return FastBeforeFrame(model, float(deadline), context_len, app)
    elif op == "after_frame":
        frame, latency, failed = data.get("frame"), data.get("latency_ms"), data.get("failed", False)
        if (type(frame) is int and 1 <= frame <= MAX_FRAME_ID and type(failed) is bool
                and ((latency is None and failed) or (type(latency) in _NUMBER and 0 <= latency <= 3_600_000))):
            return FastAfterFrame(frame, None if latency is None else float(latency), failed)
    return None


def parse_request(line: bytes) -> _Request | FastBeforeFrame | FastAfterFrame:
    """The request on one line: a model instance, or for the per-frame requests possibly its fast
    stand-in with the same fields; tell them apart by ``op``."""
    try:
        # a line opening with '{"' is UTF-8 to json.loads too (no BOM, no NUL in the first two
        # bytes): decoding it ourselves skips json's encoding detection, with the same verdict
        data = json.loads(line.decode("utf-8", "surrogatepass") if line[:2] == b'{"' else line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not a JSON object: {exc}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "JSON nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ProtocolError("bad_json", f"not a usable JSON value: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "each request is one JSON object on one line")
    fast = _fast(data)
    if fast is not None:
        return fast
    op = data.get("op")
    model = REQUESTS.get(op) if isinstance(op, str) else None
    if model is None:
        raise ProtocolError("unknown_op", f"unknown op {op!r}; allowed: {', '.join(REQUESTS)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(x) for x in e["loc"]) or "request"
        raise ProtocolError("bad_field", f"field '{field}': {e['msg']}") from None
    except RecursionError:  # an extra field nested just under the parser's limit
        raise ProtocolError("bad_json", "JSON nested too deeply") from None


def error(code: str, message: str) -> dict:
    return {"ok": False, "error": code, "message": message}


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


_LEARNED = {True: b'{"ok":true,"learned":true}\n', False: b'{"ok":true,"learned":false}\n'}
_BOOL = {True: "true", False: "false"}


def _notes_json(notes) -> str | None:
    """``,"notes":[...]`` as ``encode`` writes it (ASCII-escaped strings), "" for none; None when a
    note is not a plain string (then ``encode`` formats the whole reply)."""
    if not notes:
        return ""
    if not all(type(n) is str for n in notes):
        return None
    return ',"notes":[' + ",".join(encode_basestring_ascii(n) for n in notes) + "]"


def encode_decision(d) -> bytes:
    """The reply to ``before_frame`` for a ``core.Decision``: what ``encode`` would write for
    ``{"ok": true, "frame", "cpu_khz", "gpu_hz", "predicted_ms", "feasible"[, "mem_hz"][, "notes"]}``,
    byte for byte, formatted directly (the common replies: boards with a memory domain, notes)."""
    pred = d.predicted_ms
    notes = _notes_json(d.notes)
    if notes is None or type(pred) is not float or not math.isfinite(pred):
        out = {"ok": True, "frame": d.frame, "cpu_khz": d.cpu_khz, "gpu_hz": d.gpu_hz, "predicted_ms": pred,
               "feasible": d.feasible}
        if d.mem_hz is not None:  # a board with a memory domain: the level in force
            out["mem_hz"] = int(d.mem_hz)
        if d.notes:
            out["notes"] = list(d.notes)
        return encode(out)
    gpu = "null" if d.gpu_hz is None else int(d.gpu_hz)
    mem = "" if d.mem_hz is None else f',"mem_hz":{int(d.mem_hz)}'
    return (f'{{"ok":true,"frame":{int(d.frame)},"cpu_khz":{int(d.cpu_khz)},"gpu_hz":{gpu},'
            f'"predicted_ms":{pred!r},"feasible":{_BOOL[bool(d.feasible)]}{mem}{notes}}}\n').encode()


def encode_done(done: dict) -> bytes:
    """The reply to ``after_frame`` for what ``Governor.after_frame`` returned."""
    learned = done.get("learned")
    if learned is True or learned is False:
        if len(done) == 1:
            return _LEARNED[learned]
        if len(done) == 2 and "notes" in done:
            notes = _notes_json(done["notes"])
            if notes is not None and notes:
                return f'{{"ok":true,"learned":{_BOOL[learned]}{notes}}}\n'.encode()
    return encode({"ok": True, **done})
