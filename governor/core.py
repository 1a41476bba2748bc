"""The deadline-driven control loop.

Before a frame: look up the model's precomputed grid (latency and energy at every point of the
board's frequency domains: (cpu, gpu) pairs, or CPU frequencies alone on a board without a GPU),
scale the predictions by the learned correction, keep the pairs that meet the deadline (transition
latency included where the pair would change), never go below a frame still in flight or above a
cap the hardware imposed, and pick the one with the least predicted energy. The write happens only
if the pair differs from what is in force. After the frame: the measured/predicted ratio feeds the
correction, a high quantile of recent ratios chosen so that the miss rate stays at the target.

Everything on the per-frame path is a few numpy operations on a ~200-element grid; grids for a new
context length are computed once per bucket and cached (``compute_grid`` is a plain function so the
daemon can run it in another process, off its event loop).

Apps are isolated from each other: each (app, model) learns its own correction, frames belong to the
client that opened them, and the number of apps and of frames per client is bounded. Backend I/O
(writes, re-reads) happens outside the bookkeeping lock and one at a time: while a write is stalled
(a phone over ADB), other apps are still answered, with a note that their pair is not yet in force.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from dvfs_schema.board import BoardConfig
from estimator.model import Estimator
from governor.config import GovernorSettings
from governor.correction import HOST_LEVELS, Correction
from governor.frontier import Frontier, GridGeometry
from governor.measured_power import PowerTracker
from governor.power_online import PowerLearner
from governor.recording import FrameRecord, RunRecorder
from sysfs_backends.base import Backend, BackendUnavailable

log = logging.getLogger(__name__)
MAX_CACHED_GRIDS = 256
MAX_FRONTIERS_PER_LEVEL = 32  # masks (caps, floors, unreachable points) remembered per grid and level


class NeedsBackend(Exception):
    """This decision needs backend I/O: call ``before_frame`` again where it may block."""


class GovernorError(ValueError):
    """A request the governor cannot serve; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Decision(NamedTuple):
    """Immutable, and a NamedTuple rather than a frozen dataclass: built on every frame, in a
    third of the time."""

    frame: int
    cpu_khz: int
    gpu_hz: int | None  # None on a board without a GPU
    predicted_ms: float  # at the pair in force, corrected
    feasible: bool
    changed: bool
    notes: tuple[str, ...] = ()
    mem_hz: int | None = None  # the memory level, on a board with a memory domain


@dataclass
class _Grid:
    """One model (at one context bucket) over the frequency grid, for each host slowdown level
    of the correction: arrays (levels, pairs)."""

    latency_ms: np.ndarray
    energy_mj: np.ndarray  # what decisions minimise: the terms below at the learned power scales
    # the energy model's terms (idle, then each domain), J, float32: (terms, levels, points)
    energy_parts: np.ndarray | None = field(default=None, repr=False, compare=False)
    # per host level, per mask: the Pareto frontier the decision bisects (governor/frontier.py);
    # kept with the grid, so a grid evicted or replaced takes its frontiers with it
    frontiers: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class _Frame:
    app: str
    model: str
    deadline_ms: float
    column: np.ndarray  # predicted latency at the point in force, per host slowdown level
    point: tuple[int, ...]  # the frequencies it asked for, one per domain (its floor for others)
    started: float
    owner: object = None  # the client (connection) that opened it; None: the in-process API
    predicted_ms: float = 0.0  # corrected, at the pair it runs at
    parts: np.ndarray | None = None  # the energy terms at its point, per host level (power learning)


@dataclass
class _AppStats:
    frames: int = 0
    misses: int = 0
    infeasible: int = 0
    failed: int = 0
    outliers: int = 0
    last_seen: float = 0.0
    owners: set = field(default_factory=set)  # live clients that use this app name
    corrections: dict[str, Correction] = field(default_factory=dict)  # per model


def compute_grid(est: Estimator, board: BoardConfig, freq_rank: np.ndarray | None,
                 context_len: int | None) -> _Grid:
    """One model at one context bucket over every pair, for each host slowdown level.

    A module-level function of picklable arguments, so the daemon can run it in a worker process:
    it takes ~20 ms and a burst of new context lengths must not hold up other apps."""
    lat, energy, parts = [], [], []
    for s in HOST_LEVELS:
        br = est.grid(context_len, with_overlap=False, host_scale=float(s))
        lat.append(br.latency_ms)
        if freq_rank is None:  # mJ; the energy model has a term per domain the grid varies
            terms = board.energy.frame_energy_parts_j(br.freqs(), br.host_busy_ms * 1e6,
                                                      br.gpu_busy_ms * 1e6, br.latency_ms * 1e6)
            energy.append(sum(terms.values()) * 1e3)
            parts.append(np.array(list(terms.values()), dtype=np.float32))
        else:
            energy.append(freq_rank)
    return _Grid(latency_ms=np.array(lat), energy_mj=np.array(energy),
                 energy_parts=np.stack(parts, axis=1) if parts else None)


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
        self._lock = threading.Lock()  # bookkeeping only: never held during backend I/O
        self._io = threading.Lock()  # one backend operation at a time
        self._ids = itertools.count(1)
        self._frames: dict[int, _Frame] = {}
        self._apps: dict[str, _AppStats] = {}
        self._owner_apps: dict[object, set[str]] = {}
        self._grids: OrderedDict[tuple[str, int | None], _Grid] = OrderedDict()
        self._started = False
        self._released = False  # domains handed back while idle; taken again by the next frame
        self._io_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.inline_refresh = True  # the daemon re-reads on its own schedule instead
        # what holds ``_io`` now: "write" (a frame's write, maybe to a stalled phone: frames do not
        # queue behind it) or anything else (a re-read of the state, short: frames wait for it)
        self._io_holder: str | None = None
        # longest a frame waits for its write (None: until done). The daemon sets it from
        # settings.backend_wait_s so that a stalled phone cannot hold its clients; in process the
        # caller waits, as a plain function call would.
        self.write_wait_s: float | None = None
        self.last_frame_at = time.monotonic()
        self._power: PowerTracker | None = None  # the board's power rails, where it has any
        self._learner: PowerLearner | None = None  # power scales learned from them (power_online.py)
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
        if "mem" not in self.domains:  # estimators without a memory axis leave the memory clock alone
            board_domains = [d for d in board_domains if d != "mem"]
        if self.domains != board_domains:
            raise GovernorError(
                "bad_config", f"the estimators vary the domains {self.domains} but board "
                f"{self.board.name!r} has {board_domains}: profile the models on this board")
        self.tables = [np.array(t) for t in first.data.tables]
        self.points = first.grid_points.astype(np.int64)  # (points, domains)
        self._geometry = GridGeometry(self.points)
        self._cpu_at = self.domains.index("cpu")  # where each domain sits in a point
        self._gpu_at = self.domains.index("gpu") if "gpu" in self.domains else None
        self._mem_at = self.domains.index("mem") if "mem" in self.domains else None
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
        self._transition_costs = tuple(self._transition_ms.get(d, 0.0) for d in self.domains)
        if list(info["cpu"].frequencies) != self.tables[0].tolist():
            log.warning("the board's CPU table differs from the estimators'; the kernel will round")
        meter = self.backend.power_meter()
        self._power = PowerTracker(meter) if meter is not None else None
        if self._power is not None and self.settings.power_learning and self._freq_rank is None:
            terms = ["idle", *(d.name for d in self.board.energy.domains if d.name in self.domains)]
            whole_frame = ("idle", *(d.name for d in self.board.energy.domains if d.busy_with == "frame"))
            self._learner = PowerLearner(terms, tuple(self.settings.power_scale_bounds), whole_frame)
        self._sample_power()
        state = self.backend.state()
        self._cur = self._read_point(state)
        self._target = self._cur
        self._caps = (math.inf,) * len(self.domains)
        self._caps_until = 0.0
        self._next_refresh = time.monotonic() + self.settings.state_refresh_s
        self._released = False
        self._started = True

    def stop(self) -> list[str]:
        if not self._started:
            return []
        self._started = False
        try:
            with self._io:  # after any write under way; none starts once _started is False
                if self._released:
                    return []
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
    def grid_key(self, model: str, context_len: int | None) -> tuple[str, int | None]:
        """The cache key of a model's grid at a context length (raises for an unknown model or a
        language model without ``context_len``)."""
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
        return (model, bucket)

    def has_grid(self, key: tuple[str, int | None]) -> bool:
        with self._lock:
            return key in self._grids

    def grid_job(self, key: tuple[str, int | None]) -> tuple:
        """Arguments of ``compute_grid`` for ``key``."""
        return (self.models[key[0]], self.board, self._freq_rank, key[1])

    def before_start_grid(self, model: str) -> None:
        """Compute a fixed-shape model's only grid now, so its first frame does not wait."""
        self._grid(model, None)

    def grid_inputs(self) -> tuple:
        """(models, board, freq_rank): what a worker process needs to compute any grid."""
        return (self.models, self.board, self._freq_rank)

    def add_grid(self, key: tuple[str, int | None], grid: _Grid) -> None:
        with self._lock:
            self._store_grid(key, grid)

    def _store_grid(self, key: tuple[str, int | None], grid: _Grid) -> None:
        if self._learner is not None and self._learner.applied_fits and grid.energy_parts is not None:
            grid.energy_mj = self._learner.energy_mj(grid.energy_parts)  # computed at the tables' power
        self._grids[key] = grid
        self._grids.move_to_end(key)
        while len(self._grids) > MAX_CACHED_GRIDS:
            self._grids.popitem(last=False)  # least recently used: a burst cannot evict busy grids

    def _grid(self, model: str, context_len: int | None) -> _Grid:
        key = self.grid_key(model, context_len)
        with self._lock:
            grid = self._grids.get(key)
            if grid is not None:
                self._grids.move_to_end(key)
                return grid
        grid = compute_grid(*self.grid_job(key))
        self.add_grid(key, grid)
        return grid

    def _index(self, point: tuple[int, ...]) -> int:
        """Grid index of a point (CPU-major, like the estimator's grid)."""
        found = self._geometry.index_of.get(point)
        if found is not None:
            return found
        index = 0
        for value, table in zip(point, self.tables, strict=True):
            index = index * len(table) + min(int(np.searchsorted(table, value)), len(table) - 1)
        return index

    def _as_decision(self, point: tuple[int, ...]) -> tuple[int, int | None, int | None]:
        """(cpu_khz, gpu_hz, mem_hz) of a point; None for a domain the board does not have."""
        gpu, mem = self._gpu_at, self._mem_at
        return (int(point[self._cpu_at]), None if gpu is None else int(point[gpu]),
                None if mem is None else int(point[mem]))

    # ---- the decision ------------------------------------------------------------------
    def before_frame(self, model: str, deadline_ms: float, context_len: int | None = None,
                     app: str = "default", owner: object = None, may_block: bool = True) -> Decision:
        """Choose and put in force the pair for one frame. ``owner`` identifies the client (the
        daemon passes its connection): only it may report the frame, and its frames are dropped
        with it. ``may_block=False`` (the daemon's event loop) raises ``NeedsBackend``, with nothing
        recorded, when the decision needs a grid not yet computed or a write: the common frame
        (same pair) is then answered without leaving the loop."""
        if not self._started:
            raise GovernorError("not_started", "the governor is not running")
        if not (isinstance(deadline_ms, int | float) and math.isfinite(deadline_ms) and deadline_ms > 0):
            raise GovernorError("bad_field", f"deadline_ms must be a positive number, got {deadline_ms!r}")
        if context_len is not None and (not isinstance(context_len, int) or context_len < 0):
            raise GovernorError("bad_field", f"context_len must be a non-negative integer, got {context_len!r}")
        key = self.grid_key(model, context_len)
        with self._lock:
            grid = self._grids.get(key)
            if grid is not None:
                self._grids.move_to_end(key)
        if grid is None:
            if not may_block:
                raise NeedsBackend  # computing a grid takes ~20 ms: not on the caller's loop
            grid = self._grid(model, context_len)
        now = time.monotonic()
        if self.inline_refresh and now >= self._next_refresh and not self._released:
            self.refresh()
        with self._lock:
            self.last_frame_at = now
            stats = self._app(app, owner, now)
            self._expire(now)
            # handed back while idle: take the domains again, on the I/O thread like any write
            resume = self._released
            correction = self._correction(stats, model)
            level, corr = correction.level, correction.factor
            lat, energy = grid.latency_ms[level], grid.energy_mj[level]
            idx, feasible = self._choose(lat, energy, corr, deadline_ms, now, self._frontiers_for(grid, level))
            point = self._geometry.values[idx]
            changed = resume or point != self._cur
            if changed and not may_block:
                raise NeedsBackend
            frame = next(self._ids)
            # registered before the write, so decisions made meanwhile keep this frame's floor
            self._frames[frame] = _Frame(app, model, deadline_ms, grid.latency_ms[:, idx], point, now, owner)
            self._limit_frames(owner, app)
            if not changed:  # the common frame: finished under this same lock
                return self._decided(frame, stats, grid, lat, corr, point, True, feasible, deadline_ms,
                                     False, (), context_len, now)
        notes: list[str] = []
        applied = True
        if changed:
            # a re-read of the state may hold the backend for a moment: wait for it (as long as a
            # frame may wait for its own write), so no frame is left unwritten behind a refresh;
            # behind another frame's write (a slow or stalled phone) do not queue
            if self.write_wait_s is None:
                got = self._io.acquire()
            else:
                got = self._io.acquire(blocking=False) or (
                    self._io_holder != "write" and self._io.acquire(timeout=self.write_wait_s))
            if got:
                self._io_holder = "write"
                job = self._io_thread().submit(self._io_job, self._resume_and_apply, point, lat, energy,
                                               corr, deadline_ms, now)
                try:
                    point, notes = job.result(timeout=self.write_wait_s)
                except concurrent.futures.TimeoutError:  # a stalled backend: answer, write when it can
                    applied = False
                    notes = [f"not applied yet: the backend has not answered within "
                             f"{self.write_wait_s:g} s; the pair is written when it does"]
            else:  # another write is still under way (a slow or stalled backend): do not queue behind it
                applied = False
                notes = ["not applied yet: the backend is busy with an earlier write; the pair is "
                         "written once it answers"]
        with self._lock:
            if not applied:  # the reply names what is in force now, never a pair not yet written
                point = self._cur
            return self._decided(frame, stats, grid, lat, corr, point, applied, feasible, deadline_ms,
                                 changed, tuple(notes), context_len, now)

    def _decided(self, frame: int, stats: _AppStats, grid: _Grid, lat: np.ndarray, corr: float,
                 point: tuple[int, ...], applied: bool, feasible: bool, deadline_ms: float, changed: bool,
                 notes: tuple[str, ...], context_len: int | None, now: float) -> Decision:
        """The reply for a frame whose pair is settled (``point``: what is in force); under ``_lock``."""
        eff = self._index(point)
        predicted = float(lat[eff]) * corr
        f = self._frames.get(frame)
        if f is not None:
            f.column, f.predicted_ms = grid.latency_ms[:, eff], predicted
            if self._learner is not None and grid.energy_parts is not None:
                f.parts = grid.energy_parts[:, :, eff]
            if applied:
                f.point = point
        stats.frames += 1
        feasible = feasible and predicted <= deadline_ms
        stats.infeasible += not feasible
        cpu, gpu, mem = self._as_decision(point)
        decision = Decision(frame, cpu, gpu, round(predicted, 4), bool(feasible), changed, notes, mem)
        if self.recorder is not None:
            held = [d for d, c in zip(self.domains, self._caps, strict=True) if now < self._caps_until
                    and math.isfinite(c)]
            self._to_record[frame] = (decision, context_len, now, held)
        return decision

    def _app(self, app: str, owner: object, now: float) -> _AppStats:
        """The app's record, created if new; the number of apps is bounded (evicting apps no live
        client uses, least recently seen first) so that a client inventing names cannot grow the
        daemon's memory or push out apps that are running."""
        stats = self._apps.get(app)
        s = self.settings
        if stats is None:
            if owner is not None and len(self._owner_apps.get(owner, ())) >= s.max_apps_per_client:
                raise GovernorError("too_many_apps", f"one client may use at most {s.max_apps_per_client} "
                                    "app names (settings.max_apps_per_client)")
            if len(self._apps) >= s.max_apps:
                in_use = {f.app for f in self._frames.values()}
                idle = [a for a, st in self._apps.items() if not st.owners and a not in in_use]
                if not idle:
                    raise GovernorError("too_many_apps", f"{len(self._apps)} apps are connected, the most "
                                        f"allowed (settings.max_apps)")
                self._apps.pop(min(idle, key=lambda a: self._apps[a].last_seen))
            stats = self._apps[app] = _AppStats()
        stats.last_seen = now
        if owner is not None and owner not in stats.owners:
            stats.owners.add(owner)
            self._owner_apps.setdefault(owner, set()).add(app)
        return stats

    def _correction(self, stats: _AppStats, model: str) -> Correction:
        c = stats.corrections.get(model)
        if c is None:
            c = stats.corrections[model] = Correction(self.settings)
        return c

    def correction(self, app: str, model: str) -> Correction:
        """The correction one app has learned for one model (a fresh one if it has none yet)."""
        with self._lock:
            stats = self._apps.get(app)
            found = stats.corrections.get(model) if stats else None
            return found if found is not None else Correction(self.settings)

    def _limit_frames(self, owner: object, app: str) -> None:
        """At most ``max_frames_per_client`` frames in flight per client (per app in process): the
        oldest beyond that was abandoned, and its frequency floor goes with it."""
        if len(self._frames) <= self.settings.max_frames_per_client:
            return  # nobody can be over the limit: no scan on the per-frame path
        mine = [k for k, f in self._frames.items() if f.owner is owner and (owner is not None or f.app == app)]
        for k in mine[:-self.settings.max_frames_per_client]:
            del self._frames[k]

    def _frontiers_for(self, grid: _Grid, level: int) -> dict:
        """The frontiers of one grid at one correction state (host level), by mask. (``_choose``
        without them decides by numpy over the whole grid: what the frontier is tested against.)"""
        found = grid.frontiers.get(level)
        if found is None:
            found = grid.frontiers[level] = {}
        return found

    def _allowed(self, caps: tuple | None, floor: tuple | None) -> np.ndarray:
        """The points a decision may choose: reachable, under the caps, not under the floor."""
        allowed = self._reachable.copy()
        if caps is not None:
            allowed &= np.all(self.points <= np.array(caps), axis=1)
        if floor is not None:  # never lower a domain under a frame in flight
            allowed &= np.all(self.points >= np.array(floor), axis=1)
        if not allowed.any():
            allowed[:] = True
        return allowed

    def _choose(self, lat: np.ndarray, energy_mj: np.ndarray, corr: float, deadline_ms: float,
                now: float, frontiers: dict | None = None) -> tuple[int, bool]:
        caps = self._caps if now < self._caps_until else None
        floor = self._floor() if self._frames else None
        if frontiers is not None:  # bisection on the cached frontier of this mask: the same choice
            key = (caps, floor, self._reachable.tobytes())
            front = frontiers.get(key)
            if front is None:
                if len(frontiers) >= MAX_FRONTIERS_PER_LEVEL:
                    frontiers.clear()
                front = frontiers[key] = Frontier(self._geometry, lat, energy_mj, self._allowed(caps, floor))
            return front.choose(corr, deadline_ms, self._index(self._cur), self._cur, self._transition_costs,
                                self.settings.hysteresis)
        pred = lat * corr
        allowed = self._allowed(caps, floor)
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

    def _floor(self) -> tuple[int, ...]:
        """Per domain, the highest frequency a frame in flight asked for (0 when none)."""
        if not self._frames:
            return (0,) * len(self.domains)
        return tuple(max(col) for col in zip(*[f.point for f in self._frames.values()], strict=True))

    def _io_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._io_pool is None:
            self._io_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="backend-io")
        return self._io_pool

    def _io_job(self, fn, *args):
        """Run on the I/O thread holding ``_io`` (acquired by the caller), release it when done."""
        try:
            return fn(*args)
        finally:
            self._io_holder = None
            self._io.release()

    def refresh(self) -> None:
        """Re-read the frequencies in force: a cap or another agent may have moved them without
        any write of ours. Skipped while another backend operation runs; waited for at most
        ``backend_wait_s`` (a stalled backend finishes it in the background)."""
        if self._released or not self._started or not self._io.acquire(blocking=False):
            return
        self._io_holder = "refresh"
        now = time.monotonic()
        self._next_refresh = now + self.settings.state_refresh_s
        job = self._io_thread().submit(self._io_job, self._refresh, now)
        try:
            job.result(timeout=self.write_wait_s)
        except concurrent.futures.TimeoutError:
            pass

    def _refresh(self, now: float) -> None:
        try:
            state = self.backend.state()
        except BackendUnavailable:
            return
        self._sample_power()
        eff = self._read_point(state)
        with self._lock:
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
        return self.backend.apply(dict(zip(self.domains, point, strict=True)))

    def _apply(self, point: tuple[int, ...], lat: np.ndarray, energy_mj: np.ndarray, corr: float,
               deadline_ms: float, now: float) -> tuple[tuple[int, ...], list[str]]:
        """Write ``point``; while the kernel shows a cap or a clock that cannot reach a target,
        learn it and decide again among the points the hardware allows (at most once per domain
        and once more: each round rules out a frequency or sets a cap). Called holding ``_io``
        (not ``_lock``): the writes may be slow."""
        notes: list[str] = []
        eff = self._cur
        for _ in range(len(self.domains) + 2):
            with self._lock:
                self._target = point
            try:
                res = self._write(point)
            except BackendUnavailable as exc:
                # keep serving: the frame runs at whatever is in force; retried on the next frame
                return self._cur, notes + [f"not applied: {exc}"]
            eff = tuple(res.effective.get(d, v) for d, v in zip(self.domains, point, strict=True))
            notes += res.notes
            with self._lock:
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
        with self._lock:
            raise_to = tuple(max(f, e) for f, e in zip(self._floor(), eff, strict=True))
            raise_ok = raise_to != eff and now >= self._caps_until and bool(self._reachable[self._index(raise_to)])
            if raise_ok:  # frames decided while this write was under way asked for more
                self._target = raise_to
        if raise_ok:
            try:
                res = self._write(raise_to)
                with self._lock:
                    self._cur = tuple(res.effective.get(d, v) for d, v in zip(self.domains, raise_to, strict=True))
            except BackendUnavailable as exc:
                notes.append(f"not applied: {exc}")
        return eff, notes

    def after_frame(self, frame: int, latency_ms: float | None, owner: object = None, failed: bool = False) -> dict:
        """Report a frame. A failed frame (the inference raised) is counted, never learned from;
        a latency over ``outlier_ratio`` x the prediction (a suspended or preempted process, a
        wrong unit) counts as late but does not feed the correction. Returns what was done."""
        if not failed and not (isinstance(latency_ms, int | float) and math.isfinite(latency_ms)
                               and latency_ms >= 0):
            raise GovernorError("bad_field", f"latency_ms must be a non-negative number, got {latency_ms!r}")
        with self._lock:
            f = self._frames.get(frame)
            if f is None or (owner is not None and f.owner is not owner):
                raise GovernorError("unknown_frame", f"frame {frame!r} is not in flight on this connection "
                                    "(done, expired or opened by another client)")
            del self._frames[frame]
            stats = self._apps.get(f.app)
            if stats is None:  # evicted meanwhile
                return {"learned": False}
            if failed:
                stats.failed += 1
                if self._learner is not None:
                    self._learner.failed_frame()
                return {"learned": False}
            if f.parts is not None:  # power learning: its energy terms, stretched to what it took
                level = self._correction(stats, f.model).level
                if f.column[level] > 0:
                    self._learner.frame(f.parts, level, float(latency_ms) / float(f.column[level]), f.point)
            if latency_ms > f.deadline_ms:
                stats.misses += 1
            if self.recorder is not None:
                self._record(f, frame, latency_ms)
            limit = self.settings.outlier_ratio * max(f.predicted_ms, f.deadline_ms)
            if latency_ms > limit:
                stats.outliers += 1
                return {"learned": False, "notes": [f"latency {latency_ms:g} ms is over {limit:g} ms "
                                                    f"({self.settings.outlier_ratio:g}x the prediction or "
                                                    "deadline): counted as late, not learned from"]}
            self._correction(stats, f.model).add(f.column, latency_ms)
            return {"learned": True}

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
            gpu_hz=d.gpu_hz if self.board.gpu else None, mem_hz=d.mem_hz, predicted_ms=d.predicted_ms,
            latency_ms=round(float(latency_ms), 4), missed=latency_ms > f.deadline_ms, feasible=d.feasible,
            changed=d.changed, capped=bool(held), conditions=dict.fromkeys(held, "capped")))

    def _expire(self, now: float) -> None:
        limit = self.settings.frame_timeout_s
        if not self._frames or now - next(iter(self._frames.values())).started <= limit:
            return  # the oldest frame (first inserted) is not stale: no scan on the per-frame path
        stale = [k for k, f in self._frames.items() if now - f.started > limit]
        for k in stale:
            del self._frames[k]

    def drop_client(self, owner: object) -> int:
        """A client went away: its frames in flight (and their frequency floors) go at once, its
        app names become evictable. Returns the number of frames dropped."""
        with self._lock:
            gone = [k for k, f in self._frames.items() if f.owner is owner]
            for k in gone:
                del self._frames[k]
            for app in self._owner_apps.pop(owner, ()):
                stats = self._apps.get(app)
                if stats is not None:
                    stats.owners.discard(owner)
            return len(gone)

    # ---- idle release ------------------------------------------------------------------
    @property
    def released(self) -> bool:
        return self._released

    def release_idle(self) -> list[str] | None:
        """Hand the domains back (per ``idle_policy``) when no frame is in flight; the next frame
        takes them again. None when nothing was done (frames in flight, already released)."""
        if self.settings.idle_policy == "keep":
            return None
        with self._io:
            with self._lock:
                now = time.monotonic()
                self._expire(now)
                if not self._started or self._released or self._frames:
                    return None
                self._released = True
            try:
                # the domains go back, the board stays ours: the next frame takes them again, so
                # another governor must still be refused meanwhile
                done = (self.backend.restore(keep_claim=True) if hasattr(self.backend, "claim")
                        else self.backend.restore())
            except (BackendUnavailable, OSError) as exc:
                with self._lock:
                    self._released = False
                log.warning("idle: cannot hand the domains back now: %s", exc)
                return None
            log.info("idle: domains handed back (%s)", "; ".join(done) or "nothing to change")
            return done

    def _resume_and_apply(self, point: tuple[int, ...], *args) -> tuple[tuple[int, ...], list[str]]:
        """On the I/O thread holding ``_io``: after an idle release, save the settings in force
        (the originals again) before the first write."""
        if not self._started:  # stopped meanwhile: nothing may be written any more
            return self._cur, ["not applied: the governor is stopping"]
        if self._released:
            try:
                self.backend.save()
                state = self.backend.state()
            except BackendUnavailable as exc:
                return self._cur, [f"not applied: {exc}"]
            with self._lock:
                self._cur = self._read_point(state)
                self._target = self._cur
                self._released = False
            log.info("resuming: domains taken again")
            if point == self._cur:
                return point, []
        return self._apply(point, *args)

    @contextmanager
    def frame(self, model: str, deadline_ms: float, context_len: int | None = None,
              app: str = "default") -> Iterator[Decision]:
        """Decide, run the block, and report its measured duration (a block that raises is
        reported as a failed frame)."""
        decision = self.before_frame(model, deadline_ms, context_len, app)
        t0 = time.perf_counter()
        try:
            yield decision
        except BaseException:
            self.after_frame(decision.frame, None, failed=True)
            raise
        self.after_frame(decision.frame, (time.perf_counter() - t0) * 1e3)

    def _status_frequencies(self) -> dict:
        """``cpu_khz``/``gpu_hz`` (and ``mem_hz`` with a memory domain) in force; ``gpu_hz`` is null on
        a board without a GPU."""
        if not self._started:
            return {"cpu_khz": None, "gpu_hz": None} | ({"mem_hz": None} if "mem" in self.domains else {})
        cpu, gpu, mem = self._as_decision(self._cur)
        # the memory level in its domain's unit (Hz, or MB/s for a bus-bandwidth vote), named for viewers
        return {"cpu_khz": cpu, "gpu_hz": gpu} | ({"mem_hz": mem, "mem_unit": self.board.memory.unit}
                                                  if "mem" in self.domains else {})

    def _sample_power(self) -> None:
        """Sample the power rails (on the I/O thread, with the state re-read)."""
        if self._power is None:
            return
        try:
            step = self._power.sample(sum(st.frames for st in self._apps.values()))
        except (BackendUnavailable, OSError) as exc:
            log.debug("power rails not sampled: %s", exc)
            return
        if self._learner is not None and step is not None and self._learner.interval(*step):
            with self._lock:  # new scales: every grid's energies, and the frontiers built on them
                for grid in self._grids.values():
                    if grid.energy_parts is not None:
                        grid.energy_mj = self._learner.energy_mj(grid.energy_parts)
                        grid.frontiers.clear()
        if self.recorder is not None:
            self.recorder.power(self._power.status(), step, self._learner.status() if self._learner else None)

    def _power_learning_status(self) -> dict:
        """The learned power scales, where the board has a rail (``{"enabled": false}`` when turned off)."""
        if self._learner is not None:
            return {"power_learning": self._learner.status()}
        return {"power_learning": {"enabled": False}} if self._power is not None else {}

    def measured_power(self) -> dict:
        """Measured power (mW) and energy per frame (mJ) from the board's rails as of the last
        sample; {} where the board has none. Never does I/O: status must answer at once."""
        return self._power.status() if self._power is not None else {}

    def status(self) -> dict:
        with self._lock:
            models = {}
            for m, e in self.models.items():
                users = [(st.last_seen, st.corrections[m]) for st in self._apps.values() if m in st.corrections]
                c = max(users, key=lambda u: u[0])[1] if users else Correction(self.settings)
                models[m] = {"language_model": e.is_language_model, "correction": round(c.factor, 4),
                             "host_slowdown": c.host_slowdown, "samples": len(c.frames), "apps": len(users)}
            return {
                **self._status_frequencies(),
                "capped": bool(self._started and time.monotonic() < self._caps_until),
                "released": self._released,
                "models": models,
                "apps": {a: {"frames": s.frames, "misses": s.misses, "infeasible": s.infeasible,
                             "failed": s.failed, "outliers": s.outliers,
                             "corrections": {m: round(c.factor, 4) for m, c in s.corrections.items()}}
                         for a, s in self._apps.items()},
                "in_flight": len(self._frames),
                "backend": self.backend.name,
                "backend_connected": self.backend.connected,
                **self.measured_power(),
                **self._power_learning_status(),
            }
