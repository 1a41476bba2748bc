"""Socket protocol version 1 (docs/governor-protocol.md) as pydantic models.

Requests are validated strictly: a string where a number belongs is an error, not a guess.
Unknown extra fields are allowed and ignored, so newer clients work with this daemon. Hostile input
(nesting deep enough to exhaust the parser, numbers with thousands of digits, values outside every
sane range) is answered with ``bad_json``/``bad_field``, never ``internal``.
"""

from __future__ import annotations

import json
from typing import Literal

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


def parse_request(line: bytes) -> _Request:
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not a JSON object: {exc}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "JSON nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ProtocolError("bad_json", f"not a usable JSON value: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "each request is one JSON object on one line")
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
