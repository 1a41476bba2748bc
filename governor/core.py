"""The deadline-driven control loop.

Before a frame: look up the model's precomputed grid (latency and energy at every (cpu, gpu) pair),
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

import numpy as np

from estimator.model import Estimator
from governor.config import GovernorSettings
from governor.correction import HOST_LEVELS, Correction
from sysfs_backends.base import Backend, BackendUnavailable
from sysfs_backends.board import BoardConfig

log = logging.getLogger(__name__)
MAX_CACHED_GRIDS = 256


class GovernorError(ValueError):
    """A request the governor cannot serve; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Decision:
    frame: int
    cpu_khz: int
    gpu_hz: int
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
    column: np.ndarray  # predicted latency at the pair in force, per host slowdown level
    cpu: int
    gpu: int
    started: float
    owner: object = None  # the client (connection) that opened it; None: the in-process API
    predicted_ms: float = 0.0  # corrected, at the pair it runs at


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
    lat, energy = [], []
    for s in HOST_LEVELS:
        br = est.grid(context_len, with_overlap=False, host_scale=float(s))
        lat.append(br.latency_ms)
        if freq_rank is None:  # mJ
            energy.append(board.frame_energy_j(br.cpu_khz, br.gpu_hz, br.host_busy_ms * 1e6,
                                               br.gpu_busy_ms * 1e6, br.latency_ms * 1e6) * 1e3)
        else:
            energy.append(freq_rank)
    return _Grid(latency_ms=np.array(lat), energy_mj=np.array(energy))


class Governor:
    """Use as ``with Governor(...) as gov:`` (saves and restores), then ``before_frame``/
    ``after_frame`` or the ``frame`` context manager."""

    def __init__(
        self,
        backend: Backend,
        board: BoardConfig,
        models: dict[str, Estimator],
        settings: GovernorSettings | None = None,
    ) -> None:
        self.backend = backend
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
        # longest a frame waits for its write (None: until done). The daemon sets it from
        # settings.backend_wait_s so that a stalled phone cannot hold its clients; in process the
        # caller waits, as a plain function call would.
        self.write_wait_s: float | None = None
        self.last_frame_at = time.monotonic()
        self._check_tables()

    # ---- set-up ------------------------------------------------------------------------
    def _check_tables(self) -> None:
        first = next(iter(self.models.values()))
        self.cpu_table = np.array(first.data.cpu_khz)
        self.gpu_table = np.array(first.data.gpu_hz)
        for name, est in self.models.items():
            if est.data.cpu_khz != first.data.cpu_khz or est.data.gpu_hz != first.data.gpu_hz:
                raise GovernorError("bad_config", f"model {name!r} was profiled with other frequency tables")
        c, g = first.grid_pairs
        self.pair_cpu, self.pair_gpu = c.astype(np.int64), g.astype(np.int64)
        self.n_gpu = len(self.gpu_table)
        # no energy model: rank by normalised frequency, the lowest on the Pareto front
        self._freq_rank = None if self.board.has_power_tables else c / c.max() + g / max(g.max(), 1)

    def start(self) -> None:
        for line in self.backend.recover_crashed():
            log.warning("restored settings left by a killed run: %s", line)
        self.backend.save()
        info = self.backend.discover().domains
        self._transition_ms = {d: info[d].transition_latency_ns / 1e6 for d in info}
        if list(info["cpu"].frequencies) != self.cpu_table.tolist():
            log.warning("the board's CPU table differs from the estimators'; the kernel will round")
        state = self.backend.state()
        self._cur = (state["cpu"].cur, state["gpu"].cur if "gpu" in state else 0)
        self._target = self._cur
        self._caps = (math.inf, math.inf)
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

    def _index(self, cpu: int, gpu: int) -> int:
        i = int(np.searchsorted(self.cpu_table, cpu))
        j = int(np.searchsorted(self.gpu_table, gpu))
        return min(i, len(self.cpu_table) - 1) * self.n_gpu + min(j, self.n_gpu - 1)

    # ---- the decision ------------------------------------------------------------------
    def before_frame(self, model: str, deadline_ms: float, context_len: int | None = None,
                     app: str = "default", owner: object = None) -> Decision:
        """Choose and put in force the pair for one frame. ``owner`` identifies the client (the
        daemon passes its connection): only it may report the frame, and its frames are dropped
        with it."""
        if not self._started:
            raise GovernorError("not_started", "the governor is not running")
        if not (isinstance(deadline_ms, int | float) and math.isfinite(deadline_ms) and deadline_ms > 0):
            raise GovernorError("bad_field", f"deadline_ms must be a positive number, got {deadline_ms!r}")
        if context_len is not None and (not isinstance(context_len, int) or context_len < 0):
            raise GovernorError("bad_field", f"context_len must be a non-negative integer, got {context_len!r}")
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
            idx, feasible = self._choose(lat, energy, corr, deadline_ms, now)
            cpu, gpu = int(self.pair_cpu[idx]), int(self.pair_gpu[idx])
            changed = resume or (cpu, gpu) != self._cur
            frame = next(self._ids)
            # registered before the write, so decisions made meanwhile keep this frame's floor
            self._frames[frame] = _Frame(app, model, deadline_ms, grid.latency_ms[:, idx], cpu, gpu, now, owner)
            self._limit_frames(owner, app)
        notes: list[str] = []
        if changed:
            if self._io.acquire(blocking=False):
                job = self._io_thread().submit(self._io_job, self._resume_and_apply, cpu, gpu, lat, energy,
                                               corr, deadline_ms, now)
                try:
                    cpu, gpu, notes = job.result(timeout=self.write_wait_s)
                except concurrent.futures.TimeoutError:  # a stalled backend: answer, write when it can
                    notes = [f"not applied yet: the backend has not answered within "
                             f"{self.write_wait_s:g} s; the pair is written when it does"]
            else:  # another write is under way (a slow or stalled backend): do not queue behind it
                notes = ["not applied yet: the backend is busy with an earlier write; the pair is "
                         "written once it answers"]
        with self._lock:
            eff = self._index(cpu, gpu)
            predicted = float(lat[eff]) * corr
            f = self._frames.get(frame)
            if f is not None:
                f.cpu, f.gpu, f.column, f.predicted_ms = cpu, gpu, grid.latency_ms[:, eff], predicted
            stats.frames += 1
            feasible = feasible and predicted <= deadline_ms
            stats.infeasible += not feasible
            return Decision(frame, cpu, gpu, round(predicted, 4), bool(feasible), changed, tuple(notes))

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
        mine = [k for k, f in self._frames.items() if f.owner is owner and (owner is not None or f.app == app)]
        for k in mine[:-self.settings.max_frames_per_client]:
            del self._frames[k]

    def _choose(self, lat: np.ndarray, energy_mj: np.ndarray, corr: float, deadline_ms: float,
                now: float) -> tuple[int, bool]:
        pred = lat * corr
        allowed = np.ones(pred.shape, dtype=bool)
        if now < self._caps_until:
            allowed &= (self.pair_cpu <= self._caps[0]) & (self.pair_gpu <= self._caps[1])
        if self._frames:  # never lower a domain under a frame in flight
            floor_c, floor_g = self._floor()
            allowed &= (self.pair_cpu >= floor_c) & (self.pair_gpu >= floor_g)
        if not allowed.any():
            allowed[:] = True
        changes = self._transition_cost_ms()
        ok = allowed & (pred + changes <= deadline_ms)
        if not ok.any():
            masked = np.where(allowed, pred, np.inf)
            return int(np.argmin(masked)), False
        best = int(np.argmin(np.where(ok, energy_mj, np.inf)))
        cur = self._index(*self._cur)
        if ok[cur] and energy_mj[cur] <= energy_mj[best] * (1 + self.settings.hysteresis):
            return cur, True
        return best, True

    def _floor(self) -> tuple[int, int]:
        if not self._frames:
            return 0, 0
        return max(f.cpu for f in self._frames.values()), max(f.gpu for f in self._frames.values())

    def _io_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._io_pool is None:
            self._io_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="backend-io")
        return self._io_pool

    def _io_job(self, fn, *args):
        """Run on the I/O thread holding ``_io`` (acquired by the caller), release it when done."""
        try:
            return fn(*args)
        finally:
            self._io.release()

    def refresh(self) -> None:
        """Re-read the frequencies in force: a cap or another agent may have moved them without
        any write of ours. Skipped while another backend operation runs; waited for at most
        ``backend_wait_s`` (a stalled backend finishes it in the background)."""
        if self._released or not self._started or not self._io.acquire(blocking=False):
            return
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
        eff = (state["cpu"].cur, state["gpu"].cur if "gpu" in state else 0)
        with self._lock:
            if eff != self._cur:
                lower = [e < t for e, t in zip(eff, self._target, strict=True)]
                if any(lower):
                    self._caps = tuple(e if low else math.inf for e, low in zip(eff, lower, strict=True))
                    self._caps_until = now + self.settings.cap_recheck_s
                    log.info("frequencies in force dropped to %s kHz / %s Hz", *eff)
                self._cur = eff

    def _transition_cost_ms(self) -> np.ndarray:
        """Per pair: the transition latency paid if applying it changes a domain."""
        tc, tg = self._transition_ms.get("cpu", 0.0), self._transition_ms.get("gpu", 0.0)
        return np.maximum(np.where(self.pair_cpu != self._cur[0], tc, 0.0),
                          np.where(self.pair_gpu != self._cur[1], tg, 0.0))

    def _write(self, cpu: int, gpu: int):
        return self.backend.apply(cpu, gpu if self.board.gpu else None)

    def _apply(self, cpu: int, gpu: int, lat: np.ndarray, energy_mj: np.ndarray, corr: float,
               deadline_ms: float, now: float) -> tuple[int, int, list[str]]:
        """Called holding ``_io`` (not ``_lock``): the write may be slow."""
        with self._lock:
            self._target = (cpu, gpu)
        try:
            res = self._write(cpu, gpu)
        except BackendUnavailable as exc:
            # keep serving: the frame runs at whatever is in force; retried on the next frame
            return self._cur[0], self._cur[1], [f"not applied: {exc}"]
        eff_c = res.effective.get("cpu", cpu)
        eff_g = res.effective.get("gpu", gpu)
        notes = list(res.notes)
        if res.capped:
            # the hardware holds a domain lower (thermal cap, another agent): decide again among
            # the pairs it allows, with the frequencies really in force
            with self._lock:
                self._caps = (eff_c if eff_c < cpu else math.inf, eff_g if eff_g < gpu else math.inf)
                self._caps_until = now + self.settings.cap_recheck_s
                self._cur = (eff_c, eff_g)
                idx, _ = self._choose(lat, energy_mj, corr, deadline_ms, now)
                c2, g2 = int(self.pair_cpu[idx]), int(self.pair_gpu[idx])
                if (c2, g2) != (eff_c, eff_g):
                    self._target = (c2, g2)
            if (c2, g2) != (eff_c, eff_g):
                res = self._write(c2, g2)
                eff_c, eff_g = res.effective.get("cpu", c2), res.effective.get("gpu", g2)
                notes += res.notes
            log.info("capped: running %s kHz / %s Hz", eff_c, eff_g)
        with self._lock:
            self._cur = (eff_c, eff_g)
            floor = self._floor()
            raise_to = (max(floor[0], eff_c), max(floor[1], eff_g))
        if raise_to != (eff_c, eff_g) and now >= self._caps_until:
            # frames decided while this write was under way asked for more than it put in force
            with self._lock:
                self._target = raise_to
            try:
                res = self._write(*raise_to)
                with self._lock:
                    self._cur = (res.effective.get("cpu", raise_to[0]), res.effective.get("gpu", raise_to[1]))
            except BackendUnavailable as exc:
                notes.append(f"not applied: {exc}")
        return eff_c, eff_g, notes

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
                return {"learned": False}
            if latency_ms > f.deadline_ms:
                stats.misses += 1
            limit = self.settings.outlier_ratio * max(f.predicted_ms, f.deadline_ms)
            if latency_ms > limit:
                stats.outliers += 1
                return {"learned": False, "notes": [f"latency {latency_ms:g} ms is over {limit:g} ms "
                                                    f"({self.settings.outlier_ratio:g}x the prediction or "
                                                    "deadline): counted as late, not learned from"]}
            self._correction(stats, f.model).add(f.column, latency_ms)
            return {"learned": True}

    def _expire(self, now: float) -> None:
        limit = self.settings.frame_timeout_s
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
                done = self.backend.restore()
            except (BackendUnavailable, OSError) as exc:
                with self._lock:
                    self._released = False
                log.warning("idle: cannot hand the domains back now: %s", exc)
                return None
            log.info("idle: domains handed back (%s)", "; ".join(done) or "nothing to change")
            return done

    def _resume_and_apply(self, cpu: int, gpu: int, *args) -> tuple[int, int, list[str]]:
        """On the I/O thread holding ``_io``: after an idle release, save the settings in force
        (the originals again) before the first write."""
        if not self._started:  # stopped meanwhile: nothing may be written any more
            return self._cur[0], self._cur[1], ["not applied: the governor is stopping"]
        if self._released:
            try:
                self.backend.save()
                state = self.backend.state()
            except BackendUnavailable as exc:
                return self._cur[0], self._cur[1], [f"not applied: {exc}"]
            with self._lock:
                self._cur = (state["cpu"].cur, state["gpu"].cur if "gpu" in state else 0)
                self._target = self._cur
                self._released = False
            log.info("resuming: domains taken again")
            if (cpu, gpu) == self._cur:
                return cpu, gpu, []
        return self._apply(cpu, gpu, *args)

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

    def status(self) -> dict:
        with self._lock:
            models = {}
            for m, e in self.models.items():
                users = [(st.last_seen, st.corrections[m]) for st in self._apps.values() if m in st.corrections]
                c = max(users, key=lambda u: u[0])[1] if users else Correction(self.settings)
                models[m] = {"language_model": e.is_language_model, "correction": round(c.factor, 4),
                             "host_slowdown": c.host_slowdown, "samples": len(c.frames), "apps": len(users)}
            return {
                "cpu_khz": int(self._cur[0]) if self._started else None,
                "gpu_hz": int(self._cur[1]) if self._started else None,
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
            }
