"""The deadline-driven control loop.

Before a frame: look up the model's precomputed grid (latency and energy at every point of the
board's frequency domains: (cpu, gpu) pairs, or CPU frequencies alone on a board without a GPU),
scale the predictions by the learned correction, keep the pairs that meet the deadline (transition
latency included where the pair would change), never go below a frame still in flight or above a
cap the hardware imposed, and pick the one with the least predicted energy. The write happens only
if the pair differs from what is in force. After the frame: the measured/predicted ratio feeds the
correction, a high quantile of recent ratios chosen so that the miss rate stays at the target.

Everything on the per-frame path is a few numpy operations on a ~200-element grid; grids for a new
context length are computed once per bucket and cached.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from estimator.model import Estimator
from governor.config import GovernorSettings
from governor.correction import HOST_LEVELS, Correction
from governor.recording import FrameRecord, RunRecorder
from sysfs_backends.base import Backend, BackendUnavailable
from sysfs_backends.board import BoardConfig

log = logging.getLogger(__name__)
MAX_CACHED_GRIDS = 256
APPLY_ARGUMENT = {"cpu": "cpu_khz", "gpu": "gpu_hz"}  # Backend.apply's keyword for each domain


class GovernorError(ValueError):
    """A request the governor cannot serve; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Decision:
    frame: int
    cpu_khz: int
    gpu_hz: int | None  # None on a board without a GPU
    predicted_ms: float  # at the pair in force, corrected
    feasible: bool
    changed: bool
    notes: tuple[str, ...] = ()


@dataclass
class _Grid:
    """One model (at one context bucket) over the frequency grid, for each host slowdown level
    of the correction: arrays (levels, pairs)."""

    latency_ms: np.ndarray
    energy_mj: np.ndarray


@dataclass
class _Frame:
    app: str
    model: str
    deadline_ms: float
    column: np.ndarray  # predicted latency at the point in force, per host slowdown level
    point: tuple[int, ...]  # the frequencies it runs at, one per domain
    started: float


@dataclass
class _AppStats:
    frames: int = 0
    misses: int = 0
    infeasible: int = 0


class Governor:
    """Use as ``with Governor(...) as gov:`` (saves and restores), then ``before_frame``/
    ``after_frame`` or the ``frame`` context manager."""

    def __init__(
        self,
        backend: Backend,
        board: BoardConfig,
        models: dict[str, Estimator],
        settings: GovernorSettings | None = None,
        recorder: RunRecorder | None = None,
    ) -> None:
        self.backend = backend
        self.recorder = recorder  # optional: every finished frame is appended to a run record
        self._to_record: dict[int, tuple[Decision, int | None, float, list[str]]] = {}
        self.board = board
        self.models = models
        self.settings = settings or GovernorSettings()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._frames: dict[int, _Frame] = {}
        self._apps: dict[str, _AppStats] = {}
        self._corrections = {m: Correction(self.settings) for m in models}
        self._grids: dict[tuple[str, int | None], _Grid] = {}
        self._started = False
        self._check_tables()

    # ---- set-up ------------------------------------------------------------------------
    def _check_tables(self) -> None:
        """The estimators must share the board's domains and tables: the grid is their product,
        one column per domain (CPU first), so nothing below needs to know how many there are."""
        first = next(iter(self.models.values()))
        self.domains = list(first.domains)
        for name, est in self.models.items():
            if est.data.tables != first.data.tables:
                raise GovernorError("bad_config", f"model {name!r} was profiled with other frequency tables")
        board_domains = list(self.board.domain_tables)
        if self.domains != board_domains:
            raise GovernorError(
                "bad_config", f"the estimators vary the domains {self.domains} but board "
                f"{self.board.name!r} has {board_domains}: profile the models on this board")
        self.tables = [np.array(t) for t in first.data.tables]
        self.points = first.grid_points.astype(np.int64)  # (points, domains)
        # no energy model: rank by normalised frequency, the lowest on the Pareto front
        self._freq_rank = (None if self.board.has_power_tables
                           else (self.points / self.points.max(axis=0)).sum(axis=1))
        # points whose frequencies the clocks were seen unable to run (an OPP a clock cannot
        # reach): never chosen again, so decisions are made with frequencies that really run
        self._reachable = np.ones(len(self.points), dtype=bool)

    def _read_point(self, state: dict) -> tuple[int, ...]:
        return tuple(int(state[d].cur) for d in self.domains)

    def start(self) -> None:
        for line in self.backend.recover_crashed():
            log.warning("restored settings left by a killed run: %s", line)
        self.backend.save()
        info = self.backend.discover().domains
        self._transition_ms = {d: info[d].transition_latency_ns / 1e6 for d in info}
        if list(info["cpu"].frequencies) != self.tables[0].tolist():
            log.warning("the board's CPU table differs from the estimators'; the kernel will round")
        state = self.backend.state()
        self._cur = self._read_point(state)
        self._target = self._cur
        self._caps = (math.inf,) * len(self.domains)
        self._caps_until = 0.0
        self._next_refresh = time.monotonic() + self.settings.state_refresh_s
        self._started = True

    def stop(self) -> list[str]:
        if not self._started:
            return []
        self._started = False
        try:
            return self.backend.restore()
        except BackendUnavailable as exc:
            log.error("cannot restore now (%s); the saved settings stay in the state file and are "
                      "restored by `dvfs-gov restore` or the next start", exc)
            return []

    def __enter__(self) -> Governor:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- grids -------------------------------------------------------------------------
    def _grid(self, model: str, context_len: int | None) -> _Grid:
        est = self.models.get(model)
        if est is None:
            raise GovernorError("unknown_model", f"unknown model {model!r}; known: {', '.join(self.models)}")
        if est.is_language_model:
            if context_len is None:
                raise GovernorError("bad_field", f"model {model!r} is a language model: give context_len")
            b = self.settings.context_bucket
            bucket = max(b, -(-int(context_len) // b) * b)  # round up: conservative
        else:
            bucket = None
        key = (model, bucket)
        grid = self._grids.get(key)
        if grid is None:
            grid = self._compute_grid(est, bucket)
            if len(self._grids) >= MAX_CACHED_GRIDS:
                self._grids.pop(next(iter(self._grids)))
            self._grids[key] = grid
        return grid

    def _compute_grid(self, est: Estimator, context_len: int | None) -> _Grid:
        lat, energy = [], []
        for s in HOST_LEVELS:
            br = est.grid(context_len, with_overlap=False, host_scale=float(s))
            lat.append(br.latency_ms)
            if self._freq_rank is None:  # mJ; without a GPU the energy model has no GPU term
                energy.append(self.board.frame_energy_j(br.cpu_khz, br.gpu_hz, br.host_busy_ms * 1e6,
                                                        br.gpu_busy_ms * 1e6, br.latency_ms * 1e6) * 1e3)
            else:
                energy.append(self._freq_rank)
        return _Grid(latency_ms=np.array(lat), energy_mj=np.array(energy))

    def _index(self, point: tuple[int, ...]) -> int:
        """Grid index of a point (CPU-major, like the estimator's grid)."""
        index = 0
        for value, table in zip(point, self.tables, strict=True):
            index = index * len(table) + min(int(np.searchsorted(table, value)), len(table) - 1)
        return index

    def _as_decision(self, point: tuple[int, ...]) -> tuple[int, int | None]:
        by_domain = dict(zip(self.domains, point, strict=True))
        return int(by_domain["cpu"]), (int(by_domain["gpu"]) if "gpu" in by_domain else None)

    # ---- the decision ------------------------------------------------------------------
    def before_frame(self, model: str, deadline_ms: float, context_len: int | None = None,
                     app: str = "default") -> Decision:
        if not self._started:
            raise GovernorError("not_started", "the governor is not running")
        if not (isinstance(deadline_ms, int | float) and math.isfinite(deadline_ms) and deadline_ms > 0):
            raise GovernorError("bad_field", f"deadline_ms must be a positive number, got {deadline_ms!r}")
        if context_len is not None and (not isinstance(context_len, int) or context_len < 0):
            raise GovernorError("bad_field", f"context_len must be a non-negative integer, got {context_len!r}")
        with self._lock:
            grid = self._grid(model, context_len)
            now = time.monotonic()
            self._expire(now)
            if now >= self._next_refresh:
                self._refresh(now)
            correction = self._corrections[model]
            level, corr = correction.level, correction.factor
            lat, energy = grid.latency_ms[level], grid.energy_mj[level]
            idx, feasible = self._choose(lat, energy, corr, deadline_ms, now)
            point = tuple(int(v) for v in self.points[idx])
            changed = point != self._cur
            notes: list[str] = []
            if changed:
                point, notes = self._apply(point, lat, energy, corr, deadline_ms, now)
            eff = self._index(point)
            raw = float(lat[eff])
            frame = next(self._ids)
            self._frames[frame] = _Frame(app, model, deadline_ms, grid.latency_ms[:, eff], point, now)
            stats = self._apps.setdefault(app, _AppStats())
            stats.frames += 1
            predicted = raw * corr
            feasible = feasible and predicted <= deadline_ms
            stats.infeasible += not feasible
            cpu, gpu = self._as_decision(point)
            decision = Decision(frame, cpu, gpu, round(predicted, 4), bool(feasible), changed, tuple(notes))
            if self.recorder is not None:
                held = [d for d, c in zip(self.domains, self._caps, strict=True) if now < self._caps_until
                        and math.isfinite(c)]
                self._to_record[frame] = (decision, context_len, now, held)
            return decision

    def _choose(self, lat: np.ndarray, energy_mj: np.ndarray, corr: float, deadline_ms: float,
                now: float) -> tuple[int, bool]:
        pred = lat * corr
        allowed = self._reachable.copy()
        if now < self._caps_until:
            allowed &= np.all(self.points <= np.array(self._caps), axis=1)
        if self._frames:  # never lower a domain under a frame in flight
            floor = np.max([f.point for f in self._frames.values()], axis=0)
            allowed &= np.all(self.points >= floor, axis=1)
        if not allowed.any():
            allowed[:] = True
        changes = self._transition_cost_ms()
        ok = allowed & (pred + changes <= deadline_ms)
        if not ok.any():
            masked = np.where(allowed, pred, np.inf)
            return int(np.argmin(masked)), False
        best = int(np.argmin(np.where(ok, energy_mj, np.inf)))
        cur = self._index(self._cur)
        if ok[cur] and energy_mj[cur] <= energy_mj[best] * (1 + self.settings.hysteresis):
            return cur, True
        return best, True

    def _refresh(self, now: float) -> None:
        """Re-read the frequencies in force: a cap or another agent may have moved them without
        any write of ours."""
        self._next_refresh = now + self.settings.state_refresh_s
        try:
            state = self.backend.state()
        except BackendUnavailable:
            return
        eff = self._read_point(state)
        if eff != self._cur:
            lower = [e < t for e, t in zip(eff, self._target, strict=True)]
            if any(lower):
                self._caps = tuple(e if low else math.inf for e, low in zip(eff, lower, strict=True))
                self._caps_until = now + self.settings.cap_recheck_s
                log.info("frequencies in force dropped to %s", self._describe(eff))
            self._cur = eff

    def _describe(self, point: tuple[int, ...]) -> str:
        units = {"cpu": "kHz", "gpu": "Hz"}
        return " / ".join(f"{d} {v} {units.get(d, '')}".strip() for d, v in zip(self.domains, point, strict=True))

    def _transition_cost_ms(self) -> np.ndarray:
        """Per point: the transition latency paid if applying it changes a domain."""
        latency = np.array([self._transition_ms.get(d, 0.0) for d in self.domains])
        changes = self.points != np.array(self._cur)
        return np.max(np.where(changes, latency, 0.0), axis=1)

    def _write(self, point: tuple[int, ...]):
        """Apply a point through the backend, naming only the domains the board has."""
        return self.backend.apply(**{APPLY_ARGUMENT[d]: v for d, v in zip(self.domains, point, strict=True)})

    def _apply(self, point: tuple[int, ...], lat: np.ndarray, energy_mj: np.ndarray, corr: float,
               deadline_ms: float, now: float) -> tuple[tuple[int, ...], list[str]]:
        """Write ``point``; while the kernel shows a cap or a clock that cannot reach a target,
        learn it and decide again among the points the hardware allows (at most once per domain
        and once more: each round rules out at least one frequency or lowers a cap)."""
        notes: list[str] = []
        for _ in range(len(self.domains) + 2):
            self._target = point
            try:
                res = self._write(point)
            except BackendUnavailable as exc:
                # keep serving: the frame runs at whatever is in force; retried on the next frame
                return self._cur, notes + [f"not applied: {exc}"]
            eff = tuple(res.effective.get(d, v) for d, v in zip(self.domains, point, strict=True))
            notes += res.notes
            self._cur = eff
            for k, domain in enumerate(self.domains):
                if domain in res.unreachable:
                    self._reachable &= self.points[:, k] != res.target[domain]
                    log.warning("%s: %s cannot be reached (the clock runs %s); planning without it",
                                domain, res.target[domain], res.unreachable[domain])
            if res.capped:  # the kernel's limits hold a domain lower (thermal cap, another agent)
                self._caps = tuple(e if res.conditions.get(d) == "capped" else math.inf
                                   for d, e in zip(self.domains, eff, strict=True))
                self._caps_until = now + self.settings.cap_recheck_s
                log.info("capped: running %s", self._describe(eff))
            else:  # nothing holds the clocks lower: what runs is the target from now on
                self._target = eff
            if not (res.capped or res.unreachable):
                break
            idx, _ = self._choose(lat, energy_mj, corr, deadline_ms, now)
            point = tuple(int(v) for v in self.points[idx])
            if point == eff:
                break
        return eff, notes

    def after_frame(self, frame: int, latency_ms: float) -> None:
        if not (isinstance(latency_ms, int | float) and math.isfinite(latency_ms) and latency_ms >= 0):
            raise GovernorError("bad_field", f"latency_ms must be a non-negative number, got {latency_ms!r}")
        with self._lock:
            f = self._frames.pop(frame, None)
            if f is None:
                raise GovernorError("unknown_frame", f"frame {frame!r} is not in flight (done or expired)")
            if latency_ms > f.deadline_ms:
                self._apps[f.app].misses += 1
            self._corrections[f.model].add(f.column, latency_ms)
            if self.recorder is not None:
                self._record(f, frame, latency_ms)

    def _record(self, f: _Frame, frame: int, latency_ms: float) -> None:
        """Append the finished frame to the run record (decision, prediction, measurement)."""
        entry = self._to_record.pop(frame, None)
        while len(self._to_record) > 4096:  # frames that expired without after_frame
            self._to_record.pop(next(iter(self._to_record)))
        if entry is None:
            return
        d, context_len, decided_at, held = entry
        self.recorder.frame(FrameRecord(
            frame=frame, t_s=round(self.recorder.elapsed_s(decided_at), 6), app=f.app, model=f.model,
            deadline_ms=f.deadline_ms, context_len=context_len, cpu_khz=d.cpu_khz,
            gpu_hz=d.gpu_hz if self.board.gpu else None, predicted_ms=d.predicted_ms,
            latency_ms=round(float(latency_ms), 4), missed=latency_ms > f.deadline_ms, feasible=d.feasible,
            changed=d.changed, capped=bool(held), conditions=dict.fromkeys(held, "capped")))

    def _expire(self, now: float) -> None:
        limit = self.settings.frame_timeout_s
        stale = [k for k, f in self._frames.items() if now - f.started > limit]
        for k in stale:
            del self._frames[k]

    @contextmanager
    def frame(self, model: str, deadline_ms: float, context_len: int | None = None,
              app: str = "default") -> Iterator[Decision]:
        """Decide, run the block, and report its measured duration."""
        decision = self.before_frame(model, deadline_ms, context_len, app)
        t0 = time.perf_counter()
        try:
            yield decision
        finally:
            self.after_frame(decision.frame, (time.perf_counter() - t0) * 1e3)

    def _status_frequencies(self) -> dict:
        """``cpu_khz``/``gpu_hz`` in force; ``gpu_hz`` is null on a board without a GPU."""
        if not self._started:
            return {"cpu_khz": None, "gpu_hz": None}
        cpu, gpu = self._as_decision(self._cur)
        return {"cpu_khz": cpu, "gpu_hz": gpu}

    def status(self) -> dict:
        with self._lock:
            return {
                **self._status_frequencies(),
                "capped": bool(self._started and time.monotonic() < self._caps_until),
                "models": {m: {"language_model": e.is_language_model,
                               "correction": round(self._corrections[m].factor, 4),
                               "host_slowdown": self._corrections[m].host_slowdown,
                               "samples": len(self._corrections[m].frames)}
                           for m, e in self.models.items()},
                "apps": {a: {"frames": s.frames, "misses": s.misses, "infeasible": s.infeasible}
                         for a, s in self._apps.items()},
                "in_flight": len(self._frames),
                "backend": self.backend.name,
                "backend_connected": self.backend.connected,
            }
