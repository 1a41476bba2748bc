"""The protocol's hand-checked fast path for the per-frame requests accepts nothing the pydantic
models refuse and reads every field as they do; the directly formatted replies are byte for byte
what ``encode`` writes."""

from __future__ import annotations

import json
import random

import pytest

from governor.core import Decision
from governor.protocol import (
    MAX_FRAME_ID,
    REQUESTS,
    FastAfterFrame,
    FastBeforeFrame,
    ProtocolError,
    encode,
    encode_decision,
    encode_done,
    parse_request,
)

VALUES = [None, True, False, 0, 1, -1, 7, 2**63 - 1, 2**63, 2**80, 0.0, -0.0, 1e-300, 0.5, 20.0, 3_600_000,
          3_600_000.0001, 1e400, float("nan"), float("-inf"), "", "y", "yolo", "a" * 128, "a" * 129, "20",
          [], {}, [1], {"a": 1}, 10_000_000, 10_000_001, MAX_FRAME_ID]
FIELDS = {"before_frame": ["model", "deadline_ms", "context_len", "app"],
          "after_frame": ["frame", "latency_ms", "failed"]}
ABSENT = object()
PLAUSIBLE = {"model": ["yolo", "m" * 128], "deadline_ms": [20, 33.3, 3_600_000, 1e-3],
             "context_len": [None, 0, 812, 10_000_000, ABSENT], "app": ["camera", "a" * 128, ABSENT],
             "frame": [1, 17, MAX_FRAME_ID], "latency_ms": [0, 0.0, 30.1, 3_600_000, None, ABSENT],
             "failed": [True, False, ABSENT]}


def by_models(data: dict):
    """What the pydantic models alone say: the validated model, or the error code."""
    try:
        return REQUESTS[data["op"]].model_validate(data)
    except Exception as exc:  # noqa: BLE001 - any refusal
        return type(exc).__name__


def random_request(rng: random.Random) -> dict:
    op = rng.choice(list(FIELDS))
    data: dict = {"op": op}
    for name in FIELDS[op]:
        v = rng.choice(PLAUSIBLE[name] if rng.random() < 0.7 else [*VALUES, ABSENT])
        if v is not ABSENT:
            data[name] = v
    if rng.random() < 0.2:
        data["extra"] = rng.choice(VALUES)
    return data


def same(a, b) -> bool:
    return a == b or (a != a and b != b)  # NaN never gets here, but say so if it did


def test_the_fast_path_accepts_only_what_the_models_accept_and_reads_it_the_same():
    rng = random.Random(11)
    accepted = 0
    for _ in range(20000):
        data = random_request(rng)
        try:
            line = json.dumps(data).encode()
        except ValueError:
            continue
        try:
            got = parse_request(line)
        except ProtocolError:
            got = None
        model = by_models(json.loads(line))
        if isinstance(got, FastBeforeFrame | FastAfterFrame):
            accepted += 1
            assert not isinstance(model, str), f"fast path accepted what the models refuse: {data}"
            for name in FIELDS[data["op"]]:
                a, b = getattr(got, name), getattr(model, name)
                assert same(a, b) and type(a) is type(b), (data, name, a, b)
        elif got is None:  # refused: the models refuse it too (their message is the one given)
            assert isinstance(model, str), data
    assert accepted > 500


@pytest.mark.parametrize("line, fast", [
    (b'{"op":"before_frame","model":"yolo","deadline_ms":20}', True),
    (b'{"op":"before_frame","model":"llm","deadline_ms":20.5,"context_len":812,"app":"a","x":[1]}', True),
    (b'{"op":"after_frame","frame":17,"latency_ms":30.1}', True),
    (b'{"op":"after_frame","frame":17,"failed":true}', True),
    (b'{"op":"before_frame","model":"yolo","deadline_ms":NaN}', False),
    (b'{"op":"after_frame","frame":17}', False),
    (b'{"op":"status"}', False),
])
def test_common_requests_take_the_fast_path_and_the_rest_the_models(line, fast):
    try:
        got = parse_request(line)
    except ProtocolError:
        got = None
    assert isinstance(got, FastBeforeFrame | FastAfterFrame) is fast


def test_replies_are_byte_for_byte_what_encode_writes():
    for d in [Decision(1, 652800, None, 3.25, True, False), Decision(2**40, 2841600, 840000000, 12.0, False, True),
              Decision(3, 1, 2, 0.1 + 0.2, True, False, ("not applied yet",)),
              Decision(4, 1, 2, float("inf"), False, False),
              Decision(5, 2841600, 840000000, 91.4856, False, False, (), 8136),  # a memory domain
              Decision(6, 1, 2, 7.5, True, True, ('a "quoted"\\ note\n', "caf\u00e9 \U0001f600"), 2929)]:
        expected = {"ok": True, "frame": d.frame, "cpu_khz": d.cpu_khz, "gpu_hz": d.gpu_hz,
                    "predicted_ms": d.predicted_ms, "feasible": d.feasible}
        if d.mem_hz is not None:
            expected["mem_hz"] = d.mem_hz
        if d.notes:
            expected["notes"] = list(d.notes)
        assert encode_decision(d) == encode(expected)
    for done in [{"learned": True}, {"learned": False}, {"learned": False, "notes": ["over"]},
                 {"learned": False, "notes": ["predicted to wait 12.3 ms behind other apps' GPU work", 'a "b"\u00e9']},
                 {"learned": False, "notes": []}, {"learned": True, "extra": 1}]:
        assert encode_done(done) == encode({"ok": True, **done})
