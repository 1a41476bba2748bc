"""Run records: what a governed run decided and measured, one JSON object per line (JSONL).

A record is what `dvfs-gov plot run` and `dvfs-gov export-trace` read, so it is written as the run
goes (one line per frame, flushed) and survives the governor being killed: everything up to the
last complete line is readable. The first line is a header (board, domains with their frequency
tables, models); every later line is one frame, or, on a board with a power rail, one sample of it
(the rail's power, the energy it measured since the previous sample and the frames asked for
meanwhile, and the power scales learned so far).

    {"type": "header", "format": "deadline-dvfs.run/1", "board": "sd888_phone", ...}
    {"type": "frame", "t_s": 0.031, "app": "camera", "model": "yolo_tiny", "deadline_ms": 20.0, ...}
    {"type": "power", "t_s": 0.5, "rail": "battery", "power_w": 2.91, "energy_j": 1.43, "frames": 16, ...}
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RUN_FORMAT = "deadline-dvfs.run/1"


class RecordError(ValueError):
    """A run record that cannot be read; the message names the file and line."""


class RecordedDomain(BaseModel):
    """A frequency domain of the board, with the table the governor chose from."""

    model_config = ConfigDict(extra="forbid")
    name: str  # "cpu", "gpu", "mem"
    unit: Literal["kHz", "Hz", "MB/s"]  # MB/s: a memory domain that is a bus-bandwidth vote
    frequencies: list[int]


class RunHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["header"] = "header"
    format: Literal["deadline-dvfs.run/1"] = RUN_FORMAT
    board: str
    backend: str = ""
    started_unix_s: float = Field(default_factory=time.time)
    domains: list[RecordedDomain]
    models: list[str]


class FrameRecord(BaseModel):
    """One governed frame: the decision, the prediction and what was measured."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["frame"] = "frame"
    frame: int
    t_s: float  # when the decision was made, seconds since the record's start
    app: str
    model: str
    deadline_ms: float
    context_len: int | None = None
    cpu_khz: int
    gpu_hz: int | None = None
    mem_hz: int | None = None  # on a board with a memory domain
    predicted_ms: float
    latency_ms: float
    missed: bool
    feasible: bool
    changed: bool = False
    capped: bool = False
    conditions: dict[str, str] = {}  # per domain, what the backend said held it (e.g. "capped")
    power_w: float | None = None  # measured board power over the frame, where a sensor gave one


class PowerRecord(BaseModel):
    """One sample of the board's power rail, as the governor read it (on its own schedule)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["power"] = "power"
    t_s: float
    rail: str
    power_w: float | None = None  # None: the rail gave no reading (a note says why in status)
    energy_j: float | None = None  # since the previous sample; None at the first or across a gap
    interval_s: float | None = None
    frames: int | None = None  # frames asked for since the previous sample
    energy_per_frame_mj: float | None = None  # the governor's windowed figure (measured_power.py)
    power_scales: dict[str, float] | None = None  # learned scales in force (power_online.py)


class RunRecord(BaseModel):
    header: RunHeader
    frames: list[FrameRecord]
    power: list[PowerRecord] = []


class RunRecorder:
    """Appends frames to a JSONL file, one flushed line each; safe to call from several threads.

    The governor calls ``frame`` from ``after_frame`` with its lock held, so this must be quick:
    one ``write`` + ``flush`` of a few hundred bytes.
    """

    def __init__(self, path: str | Path, header: RunHeader) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._frames_seen: int | None = None  # the power rail's frame count at its previous sample
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._write(header.model_dump_json())

    def elapsed_s(self, monotonic_s: float | None = None) -> float:
        """Seconds since the record started, for a ``time.monotonic()`` reading (default: now)."""
        return (time.monotonic() if monotonic_s is None else monotonic_s) - self._t0

    def _write(self, line: str) -> None:
        with self._lock:
            if self._file is None:
                return
            self._file.write(line + "\n")
            self._file.flush()

    def frame(self, record: FrameRecord) -> None:
        self._write(record.model_dump_json(exclude_none=False))

    def power(self, status: dict, step: tuple[float | None, int] | None, learning: dict | None) -> None:
        """A sample of the power rail: ``status`` is ``PowerTracker.status()``, ``step`` the energy
        (uJ) and time (ns) since the previous sample, ``learning`` the learner's status."""
        if not status:
            return
        frames = status.get("measured_frames")
        energy_uj, dt_ns = step if step is not None else (None, None)
        with self._lock:
            seen, self._frames_seen = self._frames_seen, frames
        new = None if frames is None or seen is None else frames - seen
        record = PowerRecord(
            t_s=round(self.elapsed_s(), 6), rail=status["power_rail"],
            power_w=None if status.get("power_mw") is None else round(status["power_mw"] / 1e3, 4),
            energy_j=None if energy_uj is None else round(energy_uj / 1e6, 6),
            interval_s=None if dt_ns is None else round(dt_ns / 1e9, 6), frames=new,
            energy_per_frame_mj=status.get("energy_per_frame_mj"),
            power_scales=learning.get("power_scales") if learning and learning.get("applied_fits") else None)
        self._write(record.model_dump_json())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def header_for(board, models: list[str], backend: str = "") -> RunHeader:
    """The header of a run on ``board`` (a BoardConfig)."""
    domains = [RecordedDomain(name="cpu", unit="kHz", frequencies=list(board.cpu.inference.frequencies_khz))]
    if board.gpu is not None:
        domains.append(RecordedDomain(name="gpu", unit="Hz", frequencies=list(board.gpu.frequencies_hz)))
    if board.memory is not None:
        domains.append(RecordedDomain(name="mem", unit=board.memory.unit,
                                      frequencies=list(board.memory.frequencies_hz)))
    return RunHeader(board=board.name, backend=backend, domains=domains, models=models)


def read_run(path: str | Path) -> RunRecord:
    """Read a record; a torn last line (the writer was killed mid-write) is dropped, any other bad
    line is an error naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not lines:
        raise RecordError(f"{path}: empty; a run record starts with a header line")
    try:
        header = RunHeader.model_validate_json(lines[0])
    except ValidationError as exc:
        raise RecordError(f"{path}, line 1: not a {RUN_FORMAT} header: {_first(exc)}") from None
    frames, power = [], []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            if _line_type(line) == "power":
                power.append(PowerRecord.model_validate_json(line))
                continue
            frames.append(FrameRecord.model_validate_json(line))
        except ValidationError as exc:
            if i == len(lines) and not line.rstrip().endswith("}"):
                break  # torn last line
            raise RecordError(f"{path}, line {i}: {_first(exc)}") from None
    return RunRecord(header=header, frames=frames, power=power)


def _line_type(line: str) -> str | None:
    """The ``type`` of a record line (None if it is not a JSON object: the validation says why)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj.get("type") if isinstance(obj, dict) else None


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "(line)"
    return f"field '{key}': {err['msg']}"
