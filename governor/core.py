"""The deadline-driven control loop.

Before a frame: look up the model's precomputed grid (latency, energy and GPU busy time at every
point of the board's frequency domains: (cpu, gpu) pairs, or CPU frequencies alone on a board
without a GPU), scale the predictions by the learned correction and keep the points that

* meet the deadline, counting the actuation delay (until a new frequency takes effect the frame
  runs at the old point) and the GPU work other apps' frames in flight have queued ahead of it
  (waiting is added time at that point's GPU frequency, not a slowdown factor);
* still let every frame in flight meet its own deadline (one point serves them all);
* lie under every domain's cap: the kernel's max as last read back (after a write, or the periodic
  re-read of the state), per domain; a cap's onset and lift are seen there, not guessed by a timer;

and pick the one with the least predicted energy. Only the domains whose frequency differs from
what is in force are written. After the frame: the measured latency less its predicted queueing
wait feeds the correction, whose margin (governor/margins.py) keeps the miss rate at the target.

The common frame (the point in force still the choice) is decided without numpy over the grid:
the point in force is predicted alone, in full (actuation delay, queueing wait, the deadlines of
the frames in flight at that point), and kept when it meets the deadline and costs at most
``(1 + hysteresis)`` x the least energy on the cached Pareto frontier (governor/frontier.py) of
the points whose corrected latency with the least possible wait meets it, a lower bound of every
point's full prediction, so this is exactly what the full decision keeps (infeasible: kept when
no point can be as fast). Otherwise (a change) the full decision runs: numpy over the grid (a few
hundred to ~1300 points), the frames in flight as one latency threshold per grid and level.
Grids for a new context length are computed once per bucket and cached (``compute_grid`` is a
plain function so the daemon can run it in another process, off its event loop). A language
model's frame whose bucket has no grid yet is decided on the nearest bucket's within
``STAND_IN_BUCKETS`` while its own is computed (``_stand_in``): a grid takes 70-150 ms, and
neighbouring buckets differ by about a thousandth.

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
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from dvfs_schema.board import BoardConfig
from estimator.model import Estimator
from governor.config import GovernorSettings
from governor.correction import HOST_LEVELS, Correction
from governor.frontier import GridGeometry, SortedPoints, Staircase
from governor.gpu_share import GpuShare
from governor.margins import prior_margin
from governor.measured_power import PowerTracker
from governor.power_online import PowerLearner
from governor.recording import FrameRecord, RunRecorder
from sysfs_backends.base import Backend, BackendUnavailable

log = logging.getLogger(__name__)
MAX_CACHED_GRIDS = 256
MISS_REFRESH_S = 0.05  # after a late frame, re-read the state within this (not on every late frame)
WRITE_QUEUE_S = 0.05  # longest a frame waits behind another frame's write (then answered, pair not in force)
# frames that wait for one write (on the daemon's loop) before the next ones join it instead, and they too
JOIN_AFTER_WAITING = 2
STAND_IN_BUCKETS = 8  # context buckets a computed grid may stand in across (see Governor._stand_in)
STALLED_WRITE_NOTE = ("answered at the pair in force while an earlier write is still under way (the backend is "
                      "slow to answer): it may change during the frame")
JOINED_WRITE_NOTE = ("started at the pair in force while another frame's write is under way: the point the frames "
                     "in flight need is written right after it (predicted here at the pair in force)")
HISTORY = 512  # changes of the point in force remembered: a frame that ran across some is learned from
MAX_RECHECK = 16  # a hidden cap found still there is asked past again after at most 16 x cap_recheck_s
# writes remembered for the lead a written point's frame starts with, and the quantile taken: low,
# since a lead longer than the write counts work ahead as done that is not (a wait unforeseen)
WRITE_LEAD_SAMPLES = 32
WRITE_LEAD_QUANTILE = 25.0
# writes of one set of domains remembered before that set has a lead of its own (else the lead of all)
WRITE_LEAD_OWN_AFTER = 8
WAIT_LEARN_SHARE = 0.1  # a frame predicted to wait longer than this share of its latency: its fit is not learned
FRESH_READ_S = 0.0  # a write follows a read-back at most this old; else the state is read first
MAX_FRONTIERS_PER_LEVEL = 32  # masks (caps, unreachable points, point in force) kept per grid and level


class NeedsBackend(Exception):
    """This decision needs backend I/O: call ``before_frame`` again where it may block."""


class NeedsWrite(NeedsBackend):
    """This decision writes a point: frames asked after it are decided once its write has ended
    (``WriteUnderWay``), or join it (``Governor.before_frame``)."""


class WriteUnderWay(NeedsBackend):
    """Another decision's write is under way: the point in force is about to change. Ask again
    once it has (``Governor.on_writes_done``), or where it may block (there it waits for it)."""


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
    energy_mj: np.ndarray
    gpu_ms: np.ndarray  # (pairs,) GPU busy time: what frames queued behind this one wait for
    # per host level, per mask: the Pareto frontier the common decision searches (governor/frontier.py);
    # the energy model's terms (idle, then each domain), J, float32: (terms, levels, points); what
    # power learning rescales ``energy_mj`` from (the terms at the learned power scales)
    energy_parts: np.ndarray | None = field(default=None, repr=False, compare=False)
    # kept with the grid, so a grid evicted or replaced takes its frontiers with it
    frontiers: dict = field(default_factory=dict, repr=False, compare=False)
    sorted_lat: dict = field(default_factory=dict, repr=False, compare=False)  # per level: latency sorted
    least_energy: dict = field(default_factory=dict, repr=False, compare=False)  # per level: min energy_mj
    # a language model's next context bucket was asked for when this grid was first used (once)
    asked_ahead: bool = field(default=False, repr=False, compare=False)

    def reprice(self, energy_mj: np.ndarray) -> None:
        """New energies (power learning's scales): what was derived from the old ones goes too."""
        self.energy_mj = energy_mj
        self.least_energy.clear()
        self.frontiers.clear()


@dataclass
class _Ask:
    """What one decision is about: the frame's model row at its host level, its correction."""

    lat: np.ndarray  # (points,) predicted latency, uncorrected
    energy_mj: np.ndarray
    gpu_ms: np.ndarray
    corr: float
    deadline_ms: float
    now: float
    app: str
    frame: int = 0  # its id once registered (a frame does not constrain its own decision)
    seen: tuple | None = None  # the point in force when it was decided (None: not yet)


@dataclass
class _Frame:
    app: str
    model: str
    deadline_ms: float
    column: np.ndarray  # predicted latency at the point in force, per host slowdown level
    point: tuple[int, ...]  # the frequencies it asked for, one per domain
    started: float
    owner: object = None  # the client (connection) that opened it; None: the in-process API
    predicted_ms: float = 0.0  # corrected, at the pair it runs at, queueing wait included
    lat: np.ndarray | None = None  # (points,) its latency at every point, uncorrected (x ``corr``)
    corr: float = 1.0  # its correction's factor when decided
    gpu_ms: np.ndarray | None = None  # (points,) its GPU busy time at every point
    wait_ms: float = 0.0  # predicted wait behind other apps' GPU work, at the pair it runs at
    pending: bool = False  # its pair was not written yet (the backend was busy)
    parts: np.ndarray | None = None  # the energy terms at its point, per host level (power learning)
    # (points,) its predicted energy at every point, and the least of it: a decision while it runs
    # sets the point its remaining work runs at, so that work's energy is part of the choice
    energy: np.ndarray | None = field(default=None, repr=False)
    least_energy: float = 0.0
    # ``lat`` sorted (shared by every frame of its grid and level): the points at which it meets its
    # deadline are those of latency up to a threshold, found by bisection (``Governor._serves_in_flight``)
    lat_sorted: list | None = field(default=None, repr=False)
    # its GPU busy time in s at every point: what frames queued behind it wait, computed once per
    # frame, not per decision; and the least of its GPU busy time over the grid (ms)
    busy: np.ndarray | None = field(default=None, repr=False)
    gpu_least: float | None = field(default=None, repr=False)
    at: tuple | None = field(default=None, repr=False)  # (a point i, ``lat[i]``, ``gpu_ms[i]``): i is mostly the same
    # (host levels, points) its grid's latencies (the grid's array, not a copy): what it would
    # take at each point it may run at, for learning from a frame that ran at several
    grid_lat: np.ndarray | None = field(default=None, repr=False)
    # the earliest its GPU work can have begun (s): its start, or later once a frame it queued
    # behind has been reported, when that frame's GPU work was done (``Governor._ahead_done``)
    gpu_from: float = -math.inf
    # whether its decision has been answered (its work may have begun): a frame whose point is
    # being written waits for the write before it starts, so frames answered meanwhile start
    # first and it queues behind them, with none of its work done yet
    answered: bool = True
    # (when its write path decided it (monotonic s), what the write changed (``_write_kind``))
    # until its reply is sent (``Governor.reply_sent``): the lead of later written points counts
    # to the reply, not to the write's end
    decided: tuple[float, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.gpu_from < self.started:
            self.gpu_from = self.started


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


class LatestPerModel:
    """Grids computed ahead, one per model at a time: those asked for while one is under way are
    not queued one per bucket (a decoder outrunning its grids grew the queue, and a frame that
    had to wait for its own grid waited behind it: 770-840 ms); only the latest runs next. The
    bookkeeping alone, shared by the in-process thread and the daemon's loop; callers serialise."""

    def __init__(self) -> None:
        self._running: set[str] = set()  # models with a grid being computed ahead
        self._wanted: dict[str, tuple[str, int | None]] = {}  # per model: the latest asked for meanwhile

    def offer(self, key: tuple[str, int | None]) -> bool:
        """Whether ``key`` is to be computed now (else it is kept as its model's next, replacing any)."""
        model = key[0]
        if model in self._running:
            self._wanted[model] = key
            return False
        self._running.add(model)
        return True

    def next(self, model: str) -> tuple[str, int | None] | None:
        """The next key of ``model`` to compute once one is done; None: its model is free again."""
        key = self._wanted.pop(model, None)
        if key is None:
            self._running.discard(model)
        return key

    def release(self, model: str) -> None:
        """The computing stopped early (cancelled): nothing more runs for ``model``."""
        self._wanted.pop(model, None)
        self._running.discard(model)


def compute_grid(est: Estimator, board: BoardConfig, freq_rank: np.ndarray | None,
                 context_len: int | None) -> _Grid:
    """One model at one context bucket over every pair, for each host slowdown level.

    A module-level function of picklable arguments, so the daemon can run it in a worker process:
    it takes ~20 ms and a burst of new context lengths must not hold up other apps."""
    lat, energy, parts, gpu_ms = [], [], [], None
    for s in HOST_LEVELS:
        br = est.grid(context_len, with_overlap=False, host_scale=float(s))
        lat.append(br.latency_ms)
        if gpu_ms is None:  # the host's speed does not change the GPU's work
            gpu_ms = np.asarray(br.gpu_busy_ms, dtype=float)  # zeros on a board without a GPU
        if freq_rank is None:  # mJ; the energy model has a term per domain the grid varies
            terms = board.energy.frame_energy_parts_j(br.freqs(), br.host_busy_ms * 1e6,
                                                      br.gpu_busy_ms * 1e6, br.latency_ms * 1e6)
            energy.append(sum(terms.values()) * 1e3)
            parts.append(np.array(list(terms.values()), dtype=np.float32))
        else:
            energy.append(freq_rank)
    return _Grid(latency_ms=np.array(lat), energy_mj=np.array(energy), gpu_ms=gpu_ms,
                 energy_parts=np.stack(parts, axis=1) if parts else None)


def _threshold(ordered: list[float], start: float, end: float, left: float, corr: float) -> float:
    """The largest latency of ``ordered`` (ascending, ms) at which work of which ``left`` is not
    done, beginning at ``start`` (s) at ``corr`` times that latency, ends by ``end`` (s); -inf if
    none. The exact test (numpy's float operations, element by element) is non-decreasing in the
    latency: bisect on an estimate, then settle it on the neighbours."""
    j = bisect_right(ordered, (end - start) * 1e3 / (left * corr) if left * corr > 0 else math.inf)
    while j > 0 and not start + left * (ordered[j - 1] * corr) / 1e3 <= end:
        j -= 1
    while j < len(ordered) and start + left * (ordered[j] * corr) / 1e3 <= end:
        j += 1
    return ordered[j - 1] if j > 0 else -math.inf


def _latency_limit(deadline_ms: float, delay_ms: float, old_ms: float) -> float:
    """The largest corrected latency y whose prediction with an actuation delay ``delay_ms``, from a
    point running at ``old_ms`` (``Governor._predict``: max(blend, y)), meets the deadline; -inf if
    none does."""
    if delay_ms <= 0.0:
        return deadline_ms
    if old_ms <= 0.0:
        return deadline_ms - delay_ms
    if delay_ms >= old_ms:  # the whole frame may run at the old point
        return deadline_ms if old_ms <= deadline_ms else -math.inf
    return min(deadline_ms, (deadline_ms - delay_ms) / (1.0 - delay_ms / old_ms))


def _delayed(lat_ms: float, delay_ms: float, old_ms: float) -> float:
    """``Governor._predict`` of a point of corrected latency ``lat_ms`` with an actuation delay
    ``delay_ms`` from a point running at ``old_ms``: non-decreasing in both."""
    if delay_ms <= 0.0:
        return lat_ms
    if old_ms <= 0.0:
        return lat_ms + delay_ms
    mixed = old_ms if delay_ms >= old_ms else delay_ms + (1.0 - min(delay_ms / old_ms, 1.0)) * lat_ms
    return max(mixed, lat_ms)


def _started(f: _Frame) -> float:
    return f.started


def _gpu_least_ms(f: _Frame) -> float:
    """Frame ``f``'s least GPU busy time over the grid (ms), cached on it."""
    least_ms = f.gpu_least
    if least_ms is None:
        least_ms = f.gpu_least = float(f.gpu_ms.min())
    return least_ms


def _gpu_free_after(free: float, started: float, at_s: float, progress, now: float) -> float:
    """When the GPU is free after one more frame in the queue (s): the frame begins once the GPU is
    free and it has started; by ``now`` it ran at the points in force (``progress(begin)``: the
    share of its GPU work left, and when it was done if none is), the rest takes its share of
    ``at_s`` (its time at the candidate's frequency). ``_queue_wait`` does the same over every
    point at once, with the same float operations."""
    begin = free if free > started else started
    if begin >= now:
        return begin + at_s
    left, done = progress(begin)
    return now + left * at_s if left > 0.0 else done


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
        # per model, the noise margin until enough frames are measured: from its profile's repeats
        self._priors = {name: prior_margin(e.data.repeat_noise.log_sd, e.data.repeat_noise.dof,
                                           self.settings.miss_rate_target)
                        for name, e in models.items() if e.data.repeat_noise is not None}
        self._lock = threading.Lock()  # bookkeeping only: never held during backend I/O
        self._quiet = threading.Condition(self._lock)  # notified when no write is under way any more
        # called (from any thread, under ``_lock``, must not block) each time the last write under
        # way ends (False), or the frames waiting for one may join it (True: a crowd waits, or a
        # resume has read what is in force): the daemon's loop then asks again for the frames that
        # waited (``WriteUnderWay``)
        self.on_writes_done: Callable[[bool], None] | None = None
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
        # where the grid of a language model's next context bucket is computed ahead: called with
        # its key, on the deciding thread, must not block. In process a thread (the keys under
        # way); the daemon replaces it with its grid worker process
        self.compute_ahead: Callable[[tuple[str, int | None]], None] = self._compute_ahead_in_thread
        self._ahead_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ahead_pending: set[tuple[str, int | None]] = set()
        self._ahead = LatestPerModel()
        # what holds ``_io`` now: "write" (a frame's write, maybe to a stalled phone: frames do not
        # queue behind it) or anything else (a re-read of the state, short: frames wait for it)
        self._io_holder: str | None = None
        self._writes_under_way = 0  # decisions between their choice and their reply on the write path
        self._write_since = 0.0  # when the writes under way began (monotonic s)
        # frames asked on the daemon's loop join the write under way (``_decide_locked``): from a
        # decision's write until its writer has raised the point to what they need (``_raise_to_joined``)
        self._joinable = False
        self._waiting = 0  # frames told to wait for the writes under way (``WriteUnderWay``)
        self._joined = False  # a frame joined since the writer last decided for them
        # how long a decision that writes takes from its choice to its reply (s), the last few:
        # such a frame starts that much later, the work queued ahead of it running on meanwhile
        self._write_took_s: deque[float] = deque(maxlen=WRITE_LEAD_SAMPLES)
        self._write_lead_s = 0.0  # a low quantile of them (``_note_write_took``)
        # the same per kind of write (the domains it changed and which way, ``_write_kind``), once
        # it has WRITE_LEAD_OWN_AFTER: they take different times (``_note_write_took``)
        self._write_took_by: dict[int, deque[float]] = {}
        self._lead_by: dict[int, float] = {}
        self._changed_to: tuple = (None, None)  # (point in force, per point the bits it changes)
        self.writes = 0  # points written (each a batch of stores and its settled read-back), for status
        # (when, before, after) of each change of the point in force (a write's, or seen at a read),
        # the newest last: whether a frame ran across one, and what it ran at (``_ran_column``)
        self._history: deque[tuple[float, tuple[int, ...], tuple[int, ...]]] = deque(maxlen=HISTORY)
        # longest a frame waits for its write (None: until done). The daemon sets it from
        # settings.backend_wait_s so that a stalled phone cannot hold its clients; in process the
        # caller waits, as a plain function call would.
        self.write_wait_s: float | None = None
        # whether replies after a write are sent later and reported (``reply_sent``, the daemon):
        # then a written point's lead counts to the reply (in process the reply is the return)
        self.replies_reported = False
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
        self._reachable_key = self._reachable.tobytes()  # part of a cached frontier's mask key
        self._share = GpuShare(len(self.points))  # the apps' GPU share per point (gpu_share.py)
        # (caps, reachable) -> (share version, allowed mask, its bytes: a cached frontier's key)
        self._allowed_cache: dict[tuple[bytes, bytes], tuple[int, np.ndarray, bytes]] = {}

    def _read_point(self, state: dict) -> tuple[int, ...]:
        return tuple(int(state[d].cur) for d in self.domains)

    def _actuation_ms(self, domain: str) -> float:
        """Time from a write until ``domain`` runs the new frequency: the settings' override, else
        the board config's ``actuation_latency_ns`` (dvfs_schema's DomainSpec: the transition
        latency where the board does not say, though real clocks often take longer)."""
        if domain in self.settings.actuation_ms:
            return float(self.settings.actuation_ms[domain])
        spec = next(d for d in self.board.domains if d.name == domain)
        return spec.actuation_latency_ns / 1e6

    def _observe(self, k: int, max_shown: int, condition: str, cooling: int | None = None) -> None:
        """Update domain ``k``'s cap from a settled read-back of its max and, where the kernel has
        one for it, of its thermal cooling device (called under ``_lock``).

        The cooling device's cap (``cooling``, the table's top when none is active) is the thermal
        cap itself, seen at every read-back whatever our limits: its onset and lift need no guess.
        Under the userspace governor the limits are never ours, so the max the kernel shows is the
        cap (thermal, another agent): below the table's top it is in force, at the top there is
        none. With pinned limits (min == max == our target) the max shows the cap only while it
        holds our request lower; showing our request above a known cap means the cap has lifted;
        showing a request at or under it says nothing, so the cap is kept until a read-back does
        (and asked past after ``_recheck_s``: see ``_active_caps``). On a domain with a cooling
        device that applies only to a max the cooling cap does not explain (another agent's)."""
        d, top = self.domains[k], int(self.tables[k][-1])
        if cooling is not None and self._has_cooling[k]:
            self._cool[k] = float(cooling) if cooling < top else math.inf
        if condition != "pending":  # pending: the kernel has not taken our write up: old limits, no news
            self._observe_shown(k, max_shown, top)
        cap = min(self._shown[k], self._cool[k])
        if cap != self._caps[k]:
            log.info("%s: %s", d, f"capped at {int(cap)}" if math.isfinite(cap) else "cap lifted")
            self._caps[k] = cap
            self._active = None

    def _observe_shown(self, k: int, max_shown: int, top: int) -> None:
        """The cap the kernel's max shows (``_shown``), with the timers of a cap hidden by our pin."""
        d = self.domains[k]
        ours = self._mechanism.get(d) == "minmax" and d in self._written
        if self._has_cooling[k] and max_shown >= self._cool[k]:
            shown = math.inf  # the cooling device explains it: no other cap below the thermal one
        elif not ours:
            shown = float(max_shown) if max_shown < top else math.inf
        elif max_shown < self._target[k]:
            shown = float(max_shown)
            if time.monotonic() - self._blind_since[k] > self._recheck_s[k]:  # asked past it: still there
                self._recheck_s[k] = min(2 * self._recheck_s[k], MAX_RECHECK * self.settings.cap_recheck_s)
            self._blind_since[k] = math.inf  # our request stands above it: its lift will show
        elif max_shown > self._shown[k]:
            shown = math.inf
        else:
            return
        if not math.isfinite(shown):
            self._blind_since[k] = math.inf
            self._recheck_s[k] = self.settings.cap_recheck_s
        self._hidden_changed()
        self._shown[k] = shown

    def _hidden_changed(self) -> None:
        """After a change of ``_blind_since``/``_recheck_s``: until when no hidden cap is due to be
        asked past (so that most decisions need not compute ``_active_caps``'s mask)."""
        self._unhide_at = float(np.min(self._blind_since + self._recheck_s))
        self._active = None

    def _note_change(self, before: tuple[int, ...], after: tuple[int, ...], at: float) -> None:
        """Remember, per domain changed, what ran before and when the new frequency takes effect."""
        running = self._running(at)
        if after != before:  # frames in flight since then ran at more than one point
            self._history.append((at, before, after))
        for k, (b, a) in enumerate(zip(before, after, strict=True)):
            if a != b:
                self._from = self._from[:k] + (running[k],) + self._from[k + 1:]
                self._lands_at[k] = at + self._actuation[k] / 1e3
        self._landed_by = float(self._lands_at.max())

    def _running(self, now: float) -> tuple[int, ...]:
        """Per domain, the frequency running at ``now``: the previous one until a change lands."""
        if now >= self._landed_by:  # every change has landed
            return self._cur
        return tuple(f if now < t else c for f, c, t in zip(self._from, self._cur, self._lands_at, strict=True))

    def start(self) -> None:
        for line in self.backend.recover_crashed():
            log.warning("restored settings left by a killed run: %s", line)
        self.backend.save()
        info = self.backend.discover().domains
        self._mechanism = {d: info[d].mechanism for d in self.domains}
        self._actuation = np.array([self._actuation_ms(d) for d in self.domains])
        self._actuation_list = self._actuation.tolist()
        # per domain, how long a change stalls the work running (s): the transition latency
        # (``cpuinfo_transition_latency``, the board config's ``transition_latency_ns``)
        self._stall_s = np.array([self.board.domain(d).transition_latency_ns / 1e9 for d in self.domains])
        # (point in force, per point the stall of a write to it, those stalls by class or None)
        self._stall_to = (None, None, None)
        self._stall_longest = float(self._stall_s.max())
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
        self._target = self._cur  # per domain, the frequency we last asked for
        self._written: set[str] = set()  # domains we have written (a pinned limit is then ours)
        # domains the kernel holds at our request. Until then the kernel's own governor (schedutil,
        # simple_ondemand) moves the clock: a point it happens to run is not in force, it must be
        # written like any other (seen on a real kernel: schedutil ran 2.4 GHz during a frame told 2.0)
        self._held: set[str] = set()
        self._all_held = False
        self._caps = np.full(len(self.domains), np.inf)  # in force: the lower of the two below
        self._shown = np.full(len(self.domains), np.inf)  # caps the kernel's max shows
        self._cool = np.full(len(self.domains), np.inf)  # caps the thermal cooling devices show
        # domains with a cooling device: their thermal cap is read, never assumed (no recheck)
        self._has_cooling = [state[d].cooling_cap is not None for d in self.domains]
        self._active: tuple | None = None  # _active_caps's last answer: (caps, from, until)
        # pinned limits at or under a known cap hide it (the kernel shows our pin): since when
        self._blind_since = np.full(len(self.domains), np.inf)
        # how long such a hidden cap is assumed before asking past it: doubled each time the cap
        # is found still there (a long thermal episode costs few such requests), reset by a lift
        self._recheck_s = np.full(len(self.domains), self.settings.cap_recheck_s)
        self._hidden_changed()
        for k, d in enumerate(self.domains):
            self._observe(k, state[d].max, "ok", state[d].cooling_cap)
        self._from = self._cur  # what ran before the last change of each domain
        self._lands_at = np.zeros(len(self.domains))  # when that change takes effect (monotonic s)
        self._landed_by = 0.0  # every change has landed by then (the latest of ``_lands_at``)
        self._changed_at = -math.inf  # when a write of ours last changed the point in force (``lower_dwell_ms``)
        self._stale_at: float | None = None  # a late frame asks for an early re-read of the state
        self._read_at = time.monotonic()  # the last settled read-back
        self._next_refresh = time.monotonic() + self.settings.state_refresh_s
        self._released = False
        self._started = True

    def stop(self) -> list[str]:
        if not self._started:
            return []
        self._started = False
        if self._ahead_pool is not None:
            self._ahead_pool.shutdown(wait=False, cancel_futures=True)
            self._ahead_pool = None
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

    def has_grid(self, key: tuple[str, int | None], stand_in: bool = False) -> bool:
        """Whether ``key``'s grid is computed (``stand_in``: or a grid that can stand in for it)."""
        with self._lock:
            return key in self._grids or (stand_in and self._stand_in(key) is not None)

    def _stand_in(self, key: tuple[str, int | None]) -> _Grid | None:
        """Under ``_lock``: for a language model's context bucket whose grid is not computed, the
        grid of the nearest bucket within STAND_IN_BUCKETS (a longer context first at each distance:
        it predicts no faster), or None.

        A decoder's context grows a token a frame and the next bucket's grid is computed ahead, but
        a context that jumps (a new turn's prompt, a decoder that skips through its buckets faster
        than grids are computed) found no grid and its frame waited for one: 100-200 ms on this
        machine, on 20 of the first 25 tokens of the SD888's language model in the dynamics
        benchmark (its context grows 7 tokens a frame, a bucket every 44 ms, where a grid took
        100-200 ms to compute). Buckets' grids differ by about 0.13% per bucket in latency there
        (at most, over every point and host level: 0.13% from 512 to 528 tokens, 2.1% from 512 to
        768): within eight buckets about 1%, inside the noise the margin covers, and a lasting
        offset is the correction's bias. With four, the decoder outran its grids by more than that
        after ~12 frames and its frame waited 260-340 ms (three times in its first 40 frames)."""
        model, bucket = key
        if bucket is None:
            return None
        step = self.settings.context_bucket
        for d in range(1, STAND_IN_BUCKETS + 1):
            for near in ((model, bucket + d * step), (model, bucket - d * step)):
                grid = self._grids.get(near)
                if grid is not None:
                    return grid
        return None

    def _ask_ahead(self, key: tuple[str, int | None], grid: _Grid) -> None:
        """On a language model's grid's first use, have the next context bucket's grid computed
        (``compute_ahead``): a decoder's context grows by a token a frame, and computed ahead the
        first frame at the new bucket does not wait for it (a grid takes ~100 ms for the SD888's
        smollm_135m, once per ``context_bucket`` tokens). One attribute test per frame after that."""
        if key[1] is None or grid.asked_ahead:
            return
        grid.asked_ahead = True
        ahead = (key[0], key[1] + self.settings.context_bucket)
        if not self.has_grid(ahead):
            self.compute_ahead(ahead)

    def _compute_ahead_in_thread(self, key: tuple[str, int | None]) -> None:
        """In process: compute a grid in a background thread, one per model at a time; asked for
        meanwhile, only the latest is computed next (as the daemon does: ``_compute_ahead_on_loop``)."""
        model = key[0]
        with self._lock:
            if key in self._ahead_pending or key in self._grids or not self._ahead.offer(key):
                return
            self._ahead_pending.add(key)
            if self._ahead_pool is None:
                self._ahead_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grid-ahead")

        def job() -> None:
            nonlocal key
            while key is not None:
                try:
                    self.add_grid(key, compute_grid(*self.grid_job(key)))
                except Exception:  # noqa: BLE001 - only a head start: the frame computes it if this failed
                    log.exception("computing the grid of %s ahead", key)
                with self._lock:
                    self._ahead_pending.discard(key)
                    key = self._ahead.next(model)
                    while key is not None and key in self._grids:
                        key = self._ahead.next(model)
                    if key is not None:
                        self._ahead_pending.add(key)

        self._ahead_pool.submit(job)

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
            grid.reprice(self._learner.energy_mj(grid.energy_parts))  # computed at the tables' power
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
        recorded, when the decision needs a grid not yet computed, a read of the state or a write:
        the common frame (same pair) is then answered without leaving the loop; there a frame
        asked while another decision's write is under way waits for it or, once a crowd waits,
        joins it (``_decide_locked``)."""
        if not self._started:
            raise GovernorError("not_started", "the governor is not running")
        if not (isinstance(deadline_ms, int | float) and math.isfinite(deadline_ms) and deadline_ms > 0):
            raise GovernorError("bad_field", f"deadline_ms must be a positive number, got {deadline_ms!r}")
        if context_len is not None and (not isinstance(context_len, int) or context_len < 0):
            raise GovernorError("bad_field", f"context_len must be a non-negative integer, got {context_len!r}")
        key = self.grid_key(model, context_len)
        standing_in = False
        with self._lock:
            grid = self._grids.get(key)
            if grid is not None:
                self._grids.move_to_end(key)
            else:
                grid = self._stand_in(key)
                standing_in = grid is not None
        if grid is None:
            if not may_block:
                raise NeedsBackend  # computing a grid takes ~20 ms: not on the caller's loop
            grid = self._grid(model, context_len)
        if standing_in:
            self.compute_ahead(key)  # its own, for the frames that follow
        else:
            self._ask_ahead(key, grid)
        now = time.monotonic()
        if not self._released and ((self.inline_refresh and now >= self._next_refresh)
                                   or (self._stale_at is not None and now >= self._stale_at)):
            # due, or a frame came back late (a cap may have set in): read what is in force first
            if not may_block:
                raise NeedsBackend
            self.refresh()
        while True:  # decided again after waiting for another decision's write
            with self._lock:
                got = self._decide_locked(model, deadline_ms, context_len, app, owner, grid, now, may_block)
            if got is not None:
                break
            now = time.monotonic()
        if isinstance(got, Decision):  # the common frame: answered under the lock
            return got
        frame, stats, point, ask, feasible = got
        try:
            return self._decide_with_write(frame, stats, point, ask, grid, feasible, deadline_ms, context_len, now)
        finally:
            with self._lock:
                self._write_ended()

    def _decide_locked(self, model: str, deadline_ms: float, context_len: int | None, app: str, owner: object,
                       grid, now: float, may_block: bool):
        """``before_frame``'s choice, under ``_lock``: the Decision of a frame answered at the point
        in force; None after waiting for another decision's write (decide again); or what the
        write path needs: (frame, stats, point, ask, feasible)."""
        self.last_frame_at = now
        stalled = joining = False
        if self._writes_under_way > 0:
            # the point in force is about to change: wait for the write under way and decide
            # again at what it put in force (a write of this frame's own would have queued behind
            # it anyway; the frame starts at the point it needs, decided with what the write put
            # in force). On the daemon's loop (``may_block`` false) the frame is parked there
            # until the write ends, unless JOIN_AFTER_WAITING frames already wait for it: then
            # it, and they (asked again), join the write (``_joinable``): started at once at what
            # is in force, and the point every frame in flight needs is written right after the
            # write under way, by its writer (``_raise_to_joined``). A crowd waiting cost the
            # flood's onset (32 apps x 120 fps starting at once) a write per step up: each write's
            # frames waited for it, then the next frame found the point short for all of them and
            # wrote again: three writes in a row, 11-12 ms to a first reply (median), 30-50 of 64
            # first frames past their 8.3 ms slot. Joining always, the demo's assistant, whose
            # tokens mostly joined the camera's writes, ran 1.5-2.25% of them late against
            # 0.5-0.75% (three paired runs): started at the old point, it ran there until the
            # raise landed, two writes later. Behind a write that holds the backend too long (a
            # stalled phone) a frame is answered at what is in force (with a write of its own:
            # as soon as the backend answers)
            left_s = self._write_queue_left_s()
            if left_s > 0:
                if may_block:
                    self._quiet.wait_for(lambda: self._writes_under_way == 0, None if math.isinf(left_s) else left_s)
                    return None
                if not self._joinable or self._released:  # resuming: what is in force is not known yet
                    raise WriteUnderWay
                if self._waiting < JOIN_AFTER_WAITING:
                    self._waiting += 1
                    raise WriteUnderWay
                if self._waiting == JOIN_AFTER_WAITING and self.on_writes_done is not None:
                    self._waiting += 1
                    self.on_writes_done(True)  # those that wait: asked again, they join too
                joining = True
            else:
                stalled = True
        stats = self._app(app, owner, now)
        self._expire(now)
        self._share.tick(now)
        # handed back while idle: take the domains again, on the I/O thread like any write
        resume = self._released
        correction = self._correction(stats, model)
        level, corr = correction.level, correction.factor
        ask = _Ask(grid.latency_ms[level], grid.energy_mj[level], grid.gpu_ms, corr, deadline_ms, now, app)
        if joining:
            # started at what is in force, no choice made here: the writer decides once for every
            # frame that joined (``_raise_to_joined``). A choice each, on the loop, with 30 frames
            # in flight took 0.3-0.7 ms under the lock: the flood's joiners held the writer's
            # read-back off the lock (and the interpreter) for 6-7 ms
            idx = self._index(self._cur)
            wait = self._queue_wait_at(ask, idx)
            predicted = self._predict_at(ask, idx) + wait
            feasible = predicted <= deadline_ms
        else:
            idx, feasible, predicted, wait = self._choose(ask, self._frontiers_for(grid, level))
        if not feasible and not joining:
            steady = correction.steady_factor
            if steady < corr:
                # a miss cluster's boost that no point can meet saves none of the cluster's frames:
                # one that runs as slow as the cluster misses at the fastest point too, and one
                # that does not meets the deadline where the noise's tail alone says. Kept, it held
                # the SD888's language model at the top point through the normal frames between
                # its bursts (tight deadline, 1.28x the joint oracle's energy in that phase)
                calm = replace(ask, corr=steady)
                found = self._choose(calm, self._frontiers_for(grid, level))
                if found[1]:
                    ask, corr = calm, steady
                    idx, feasible, predicted, wait = found
        point = self._geometry.values[idx]
        writes = not joining and (resume or point != self._cur or not self._all_held)
        notes = (JOINED_WRITE_NOTE,) if joining else (STALLED_WRITE_NOTE,) if stalled and not writes else ()
        if writes and not may_block:
            raise NeedsWrite
        frame = next(self._ids)
        ask.frame = frame
        # registered before the write, so decisions made meanwhile serve this frame's deadline
        self._frames[frame] = _Frame(app, model, deadline_ms, grid.latency_ms[:, idx], point, now, owner,
                                     predicted_ms=predicted, lat=ask.lat, corr=corr, gpu_ms=grid.gpu_ms,
                                     wait_ms=wait, lat_sorted=self._sorted_lat(grid, level),
                                     energy=ask.energy_mj, least_energy=self._least_energy(grid, level),
                                     grid_lat=grid.latency_ms, answered=not writes)
        if self._learner is not None and grid.energy_parts is not None:
            self._frames[frame].parts = grid.energy_parts[:, :, idx]
        self._limit_frames(owner, app)
        # its rate counts from here (a decision sent back to be made off the daemon's loop
        # comes here once)
        self._share.note(app, now, grid.gpu_ms, deadline_ms)
        if joining:  # counted in the writer's decision for the frames in flight
            self._joined = True
        if not writes:
            return self._decided(frame, stats, point, predicted, feasible, deadline_ms, False, notes, context_len, now)
        # only a decision that writes holds others back (a frame that waited for a write does not
        # count: with frames arriving faster than writes end the count never fell to zero, and
        # every frame left the fast path); the write it makes itself counts in ``_write_point``
        self._write_begins()
        self._joinable = True
        ask.seen = self._cur
        return frame, stats, point, ask, feasible

    def _write_queue_s(self) -> float:
        """Longest a frame waits behind another frame's write (in process, with no ``write_wait_s``,
        until it is done, as a plain function call would)."""
        return math.inf if self.write_wait_s is None else min(self.write_wait_s, WRITE_QUEUE_S)

    def _write_queue_left_s(self) -> float:
        """How much longer a frame waits behind the writes under way (some are): ``_write_queue_s``
        from the first (behind a stalled phone's, not again for every frame)."""
        return max(0.0, self._write_since + self._write_queue_s() - time.monotonic())

    def _write_begins(self) -> None:
        """Under ``_lock``: a write is under way (frames asked meanwhile wait for it, ``_write_queue_s``
        from the first)."""
        if self._writes_under_way == 0:
            self._write_since = time.monotonic()
        self._writes_under_way += 1

    def _write_ended(self) -> None:
        """Under ``_lock``: the end of what ``_write_begins`` began. When no write is under way any
        more, the frames that waited for one are woken."""
        self._writes_under_way -= 1
        if self._writes_under_way == 0:
            self._joinable = False
            self._waiting = 0
            self._quiet.notify_all()
            if self.on_writes_done is not None:
                self.on_writes_done(False)

    def _stalled_write_done(self, job: concurrent.futures.Future) -> None:
        """A write whose frame was answered before the backend did has ended."""
        with self._lock:
            self._write_ended()

    def _decide_with_write(self, frame: int, stats: _AppStats, point: tuple[int, ...], ask: _Ask, grid,
                           feasible: bool, deadline_ms: float, context_len: int | None, now: float) -> Decision:
        """The rest of ``before_frame`` for a frame whose point must be written: write it on the I/O
        thread, answer with what is in force."""
        notes: list[str] = []
        applied = True
        seen = ask.seen
        # a re-read of the state may hold the backend for a moment: wait for it (as long as a
        # frame may wait for its own write), so no frame is left unwritten behind a refresh;
        # behind another frame's write wait only as long as a write normally takes: a frame
        # answered meanwhile would start at the other frame's pair, but a stalled phone must
        # not hold it
        if self.write_wait_s is None:
            got = self._io.acquire()
        else:
            got = self._io.acquire(blocking=False) or self._io.acquire(
                timeout=self.write_wait_s if self._io_holder != "write" else self._write_queue_left_s())
        if got:
            self._io_holder = "write"
            started: concurrent.futures.Future = concurrent.futures.Future()
            job = self._io_thread().submit(self._io_job, self._apply_and_start, point, ask, grid, now, started)
            try:
                # the job's result, or ``started`` where frames joined the write (its raise goes on)
                concurrent.futures.wait((job, started), self.write_wait_s, concurrent.futures.FIRST_COMPLETED)
                point, notes, predicted = (started if started.done() else job).result(timeout=0)
            except concurrent.futures.TimeoutError:  # a stalled backend: answer, write when it can
                applied = False
                # the write stays under way until the backend answers: frames asked meanwhile are
                # told that what is in force may change
                with self._lock:
                    self._write_begins()
                job.add_done_callback(self._stalled_write_done)
                notes = [f"not applied yet: the backend has not answered within "
                         f"{self.write_wait_s:g} s; the pair is written when it does"]
        else:  # another write is still under way (a slow or stalled backend): do not queue behind it
            applied = False
            notes = ["not applied yet: the backend is busy with an earlier write; the pair is "
                     "written once it answers"]
        with self._lock:
            if not applied:  # the reply names what is in force now, never a pair not yet written
                point = self._cur
                predicted = self._start(ask, grid, point, False)
            return self._decided(frame, stats, point, predicted, feasible, deadline_ms, point != seen,
                                 tuple(notes), context_len, now)

    def _apply_and_start(self, point: tuple[int, ...], ask: _Ask, grid, asked_at: float,
                         started: concurrent.futures.Future) -> tuple[tuple[int, ...], list[str], float]:
        """On the I/O thread holding ``_io``: write the frame's point, then start the frame at what
        is in force (``_start``) before ``_io`` is let go; returns its (point, notes, prediction).
        Started by the frame's own thread after the job, the frame was not yet in
        the GPU queue when the next frame's write decided again under ``_io``: the demo's
        assistant kept the camera's new point, predicted with no wait, and waited 15 ms behind
        the camera's frame (answered first), late by 4-5 ms.

        Where frames joined the write: hand the frame's answer to ``started`` at once, then raise
        the point to what the frames in flight need (``_raise_to_joined``), still holding ``_io``
        and counted as a write under way (so frames asked meanwhile join that raise). Made before
        the answer, the raise held the flood's first frame for its own write and every raise
        after it (13-17 ms)."""
        point, notes = self._resume_and_apply(point, ask)
        with self._lock:
            predicted = self._start(ask, grid, point, True)
            changed = self._write_kind(ask.seen, point)
            if not self.replies_reported:
                self._note_write_took(ask.now - asked_at, changed)
            elif ask.frame in self._frames:
                self._frames[ask.frame].decided = (asked_at, changed)
            joined = self._joined
            if joined:  # the raise counts as a write under way: frames asked meanwhile join it
                self._write_begins()
            else:  # none joined: those asked from now on wait for the write's end
                self._joinable = False
        if not joined:
            return point, notes, predicted
        started.set_result((point, notes, predicted))
        try:
            self._raise_to_joined()
        finally:
            with self._lock:
                self._write_ended()
        return point, notes, predicted

    def _start(self, ask: _Ask, grid, point: tuple[int, ...], applied: bool) -> float:
        """Frame ``ask.frame``, decided on the write path, starts now at ``point`` (what is in force):
        its prediction there, queueing wait included (returned), and its GPU work joins the queue
        (frames answered before it queue ahead). Once per frame: after a write that took too
        long, the frame was started at what was in force then. Under ``_lock``."""
        eff = self._index(point)
        ask.now = time.monotonic()
        wait = self._queue_wait_at(ask, eff)
        predicted = self._predict_at(ask, eff) + wait
        f = self._frames.get(ask.frame)
        if f is not None and not f.answered:
            f.column, f.predicted_ms, f.wait_ms = grid.latency_ms[:, eff], predicted, wait
            f.started = ask.now
            f.answered = True
            if f.gpu_from < ask.now:
                f.gpu_from = ask.now
            f.pending = not applied
            if applied:
                f.point = point
            if f.parts is not None:
                f.parts = grid.energy_parts[:, :, eff]
        return predicted

    def _write_lead_s_now(self) -> float:
        """The lead ``_queue_waits`` counts for a written point now (0 while the GPU is overloaded)."""
        lead = self._write_lead_s
        return 0.0 if lead <= 0.0 or self._share.overloaded() else lead

    def _write_lead_max_s_now(self) -> float:
        """The longest lead ``_queue_waits`` counts now at any point (the shortcut's bound)."""
        lead = self._write_lead_s_now()
        if lead > 0.0 and self._lead_by:
            return max(lead, max(self._lead_by.values()))
        return lead

    def _note_write_took(self, took_s: float, changed: int = 0) -> None:
        """A decision that wrote was answered ``took_s`` after its choice, its write changing the
        domains of ``changed`` (``_write_kind``): the lead of the next decisions' written points (a
        low quantile of the last few, ``_queue_waits``), overall and per kind of write. Under
        ``_lock``. Per kind because a write's time depends on what it changes, and which way: the
        SD888 over FUSE (detector + decoder) answered writes lowering the memory clock alone in
        4.5 ms (median), raising the GPU's and lowering the memory's in 11.6 ms, the reverse in
        7.0 ms, raising all three in 9.7 ms. With one lead for all (4.5 ms), the detector, whose
        writes raised the GPU clock and lowered the memory's, was predicted to wait 8-10 ms behind
        a token's GPU work that was over by the time its reply left, and given a dearer point."""
        self._write_took_s.append(took_s)
        self._write_lead_s = float(np.percentile(self._write_took_s, WRITE_LEAD_QUANTILE))
        if changed:
            took = self._write_took_by.get(changed)
            if took is None:
                took = self._write_took_by[changed] = deque(maxlen=WRITE_LEAD_SAMPLES)
            took.append(took_s)
            if len(took) >= WRITE_LEAD_OWN_AFTER:
                self._lead_by[changed] = float(np.percentile(took, WRITE_LEAD_QUANTILE))

    def _write_kind(self, before: tuple[int, ...], after: tuple[int, ...]) -> int:
        """What a write from ``before`` to ``after`` changes: a bit per domain changed (CPU first),
        and above them a bit per domain raised (``_changed_bits`` for every point at once)."""
        n = len(self.domains)
        return sum((1 << k) + ((1 << (n + k)) if a > b else 0)
                   for k, (a, b) in enumerate(zip(after, before, strict=True)) if a != b)

    def _leads_s(self) -> np.ndarray:
        """Per point, the lead its frame begins with (s): none at the point in force, elsewhere
        the lead of the kind of write it takes where that has one of its own, else of all writes
        (``_queue_waits``, ``_choose``)."""
        lead = self._write_lead_s_now()
        leads = np.full(len(self.points), lead)
        if lead > 0.0 and self._lead_by:
            bits = self._changed_bits()
            for changed, own in self._lead_by.items():
                leads[bits == changed] = own
        leads[self._index(self._cur)] = 0.0
        return leads

    def _changed_bits(self) -> np.ndarray:
        """Per point, what a write to it from the point in force changes (``_write_kind``),
        cached with the point in force."""
        cur, bits = self._changed_to
        if cur != self._cur:
            at = np.array(self._cur)
            n = len(self.domains)
            bits = ((self.points != at) @ (1 << np.arange(n))) + ((self.points > at) @ (1 << np.arange(n, 2 * n)))
            self._changed_to = (self._cur, bits)
        return bits

    def _decided(self, frame: int, stats: _AppStats, point: tuple[int, ...], predicted: float,
                 feasible: bool, deadline_ms: float, changed: bool, notes: tuple[str, ...],
                 context_len: int | None, now: float) -> Decision:
        """The reply for a frame whose point is settled (``point``: what is in force, ``predicted``
        there, queueing wait included); under ``_lock``."""
        stats.frames += 1
        feasible = feasible and predicted <= deadline_ms
        stats.infeasible += not feasible
        cpu, gpu, mem = self._as_decision(point)
        decision = Decision(frame, cpu, gpu, round(predicted, 4), bool(feasible), changed, notes, mem)
        if self.recorder is not None:
            held = [d for d, c in zip(self.domains, self._caps, strict=True) if math.isfinite(c)]
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

    def _new_correction(self, model: str) -> Correction:
        """What an app starts from for a model: nothing learned, the margin from its profile's repeats."""
        return Correction(self.settings, self._priors.get(model))

    def _correction(self, stats: _AppStats, model: str) -> Correction:
        c = stats.corrections.get(model)
        if c is None:
            c = stats.corrections[model] = self._new_correction(model)
        return c

    def correction(self, app: str, model: str) -> Correction:
        """The correction one app has learned for one model (a fresh one if it has none yet)."""
        with self._lock:
            stats = self._apps.get(app)
            found = stats.corrections.get(model) if stats else None
            return found if found is not None else self._new_correction(model)

    def _limit_frames(self, owner: object, app: str) -> None:
        """At most ``max_frames_per_client`` frames in flight per client (per app in process): the
        oldest beyond that was abandoned, and its frequency floor goes with it."""
        if len(self._frames) <= self.settings.max_frames_per_client:
            return  # nobody can be over the limit: no scan on the per-frame path
        mine = [k for k, f in self._frames.items() if f.owner is owner and (owner is not None or f.app == app)]
        for k in mine[:-self.settings.max_frames_per_client]:
            del self._frames[k]

    def _frontiers_for(self, grid: _Grid, level: int) -> dict:
        """The frontiers of one grid at one correction state (host level), by mask."""
        found = grid.frontiers.get(level)
        if found is None:
            found = grid.frontiers[level] = {}
        return found

    def _allowed(self, caps: np.ndarray) -> np.ndarray:
        """The points a decision may choose: reachable and under the caps; if the caps rule out every
        reachable point, keep to the caps; never none. Of those, the points at which the apps
        sharing the GPU keep up (``GpuShare``): the frames in flight at one instant do not show
        whether a slower point can serve the frames that follow."""
        return self._allowed_keyed(caps)[0]

    def _allowed_keyed(self, caps: np.ndarray) -> tuple[np.ndarray, bytes]:
        """``_allowed(caps)`` and its bytes (the key of the frontiers cached for it), recomputed
        only when the caps, the reachable points or the apps' GPU share changed."""
        key = (caps.tobytes(), self._reachable_key)
        found = self._allowed_cache.get(key)
        if found is not None and found[0] == self._share.version:
            return found[1], found[2]
        under = np.all(self.points <= caps, axis=1)
        allowed = self._reachable & under
        if not allowed.any():
            allowed = under | ~self._reachable.any()
            if not allowed.any():
                allowed[:] = True
        allowed = self._share.keeps_up(allowed)
        if len(self._allowed_cache) >= MAX_FRONTIERS_PER_LEVEL:
            self._allowed_cache.clear()
        self._allowed_cache[key] = (self._share.version, allowed, allowed.tobytes())
        return allowed, self._allowed_cache[key][2]

    def _choose(self, ask: _Ask, frontiers: dict | None = None) -> tuple[int, bool, float, float]:
        """The point of least predicted energy meeting ``ask``'s deadline under the caps, serving
        the frames in flight; else the fastest allowed point (infeasible). Also returns the
        predicted latency (queueing wait included) at the point chosen and that wait.

        With ``frontiers`` (the cache of the grid's level), the point in force is kept without
        looking at the whole grid when the full decision would keep it."""
        caps = self._active_caps(ask.now)
        if frontiers is not None:
            kept = self._keep_in_force(ask, caps, frontiers)
            if kept is not None:
                return kept
        allowed = self._allowed(caps)
        serving = allowed & self._serves_in_flight(ask)
        if serving.any():
            allowed = serving
        predicted = self._predict(ask)
        wait = np.broadcast_to(self._queue_wait(ask), len(self.points))
        total = predicted + wait
        ok = allowed & (total <= ask.deadline_ms)
        if self._write_lead_s_now() > 0.0 and (ok.any() or self._share.total() is not None) \
                and self._queued_ahead(ask):
            # a written point's frame starts once the write is done, the queue ahead draining
            # meanwhile (``_queue_waits``). Also where no point is in time counted from now, once
            # the apps' rates are known (``GpuShare``): a token asked just after the demo's camera
            # frame started was predicted at 31-33 ms against its 30 ms deadline everywhere and
            # given the cap's top point, where it ran in 22-25 ms (it began after its 4-5 ms
            # write); its assistant ran at 1.14x the joint oracle's energy, 1.07-1.16x with the
            # lead counted. Not before the rates are known: 32 apps starting at once wrote 9-12
            # times instead of 3 as their queue built, each write making the next frame wait
            leads = self._leads_s()
            led = self._queue_waits(ask, leads)
            ok_led = allowed & (predicted + led <= ask.deadline_ms)
            period_ms = self._share.period_ms(ask.app)
            if period_ms is not None:
                # the frame of a written point begins once its reply has left: with the write's
                # lead it must still fit the app's period, else the app falls behind its own rate
                # (where none fits so, as before: the deadline alone)
                fits = ok_led & (predicted + led + leads * 1e3 <= max(period_ms, ask.deadline_ms))
                if fits.any():
                    ok_led = fits
            if ok.any() or ok_led.any():
                wait, total, ok = led, predicted + led, ok_led
        if not ok.any():
            # late wherever it runs: the least late point, the queue counted from now (a write's
            # lead must not make a cheaper point look less late: ``_queue_waits``)
            fastest = int(np.argmin(np.where(allowed, total, np.inf)))
            return fastest, False, float(total[fastest]), float(wait[fastest])
        energy = self._energy_in_flight(ask)
        best = int(np.argmin(np.where(ok, energy, np.inf)))
        cur = self._index(self._cur)
        if ok[cur] and (self._dwelling(ask.now) or energy[cur] <= energy[best] * (1 + self._hysteresis(ask))):
            best = cur
        return best, True, float(total[best]), float(wait[best])

    def _energy_in_flight(self, ask: _Ask) -> np.ndarray:
        """Per point, the predicted energy of this frame and of the work the frames in flight have
        left (the share of their predicted time not yet elapsed): the point chosen now is what that
        work runs at too, until the next decision. Choosing by the new frame's energy alone, a
        decoder's token arriving during a detector's frame was given the point cheapest for the
        token, whatever it made the detector's remaining GPU work cost."""
        energy = ask.energy_mj
        for k, f in self._frames.items():
            if k == ask.frame or f.energy is None or f.lat is None:
                continue
            left = self._left_and_end(f, ask.now)[0]
            if left > 0.0:
                energy = energy + left * f.energy
        return energy

    def _least_energy(self, grid: _Grid, level: int) -> float:
        """The least energy over every point at one host level (computed once per grid and level)."""
        found = grid.least_energy.get(level)
        if found is None:
            found = grid.least_energy[level] = float(grid.energy_mj[level].min())
        return found

    def _keep_in_force(self, ask: _Ask, caps: np.ndarray, frontiers: dict) -> tuple[int, bool, float, float] | None:
        """The full decision's answer when it keeps the point in force, else None (then the full
        decision runs). (Infeasible at the point in force: kept when no other point can be as fast.)

        The point in force is predicted alone, in full: actuation delay, queueing wait behind other
        apps' GPU work, whether every frame in flight still meets its deadline there. Every other
        point changes some domain, so it is in one group: the points equal to the point in force in
        the domains of longer actuation delay than domain k, differing in k. Its prediction is at
        least what a point of that latency would take with domain k's delay alone (the prediction
        grows with the delay), plus the least queueing wait any point can have (each frame queued
        ahead at its least GPU time over the grid, the least the full decision counts for it); the frames
        in flight only narrow the choice. So the least energy of each group's points within the
        latency that allows (a staircase per group, cached with the mask and the point in force)
        bounds the full decision's best from below. The point in force within the hysteresis of
        every group's bound: the full decision keeps it too."""
        cur_point = self._cur
        allowed_now, mask = self._allowed_keyed(caps)
        ordered = frontiers.get(mask)
        if ordered is None:
            if len(frontiers) >= MAX_FRONTIERS_PER_LEVEL:
                frontiers.clear()
            ordered = frontiers[mask] = SortedPoints(self.points, ask.lat, ask.energy_mj, allowed_now)
        groups = ordered.by_cur.get(cur_point)
        if groups is None:
            if len(ordered.by_cur) >= MAX_FRONTIERS_PER_LEVEL:
                ordered.by_cur.clear()
            groups = ordered.by_cur[cur_point] = self._groups(ordered, cur_point)
        cur, allowed, stairs = groups
        if not allowed:
            return None
        predicted = self._predict_at(ask, cur)
        wait = least_wait = 0.0
        hysteresis = self.settings.hysteresis
        energy_cur = float(ask.energy_mj[cur])
        least_other = 0.0  # the least the work in flight can cost at any point
        if self._frames:
            found = self._in_flight_at(ask, cur)
            if found is None:  # some frame in flight would miss its deadline here: the full decision
                return None
            wait, least_wait, shared, energy_cur, least_other = found
            predicted += wait
            if shared:
                hysteresis = max(hysteresis, self.settings.shared_hysteresis)
        deadline, corr = ask.deadline_ms, ask.corr
        if predicted <= deadline and self._dwelling(ask.now):
            return cur, True, predicted, wait
        old = float(ask.lat[self._index(self._running(ask.now))]) * corr
        if ask.now < self._landed_by:
            # a change still landing: a group's points share its domains of longer delay with
            # the point in force, so they wait for it too (``_predict``). Bounded with their own
            # domain's delay alone, every group of a faster domain looked as fast as the point in
            # force while the memory clock's 8 ms went by after a raise to the top
            pending = np.maximum(self._lands_at - ask.now, 0.0) * 1e3
            stairs = [(stair, max(delay, *(float(pending[d]) for d in longer)) if longer else delay, longer)
                      for stair, delay, longer in stairs]
        if predicted > deadline:
            # infeasible here: kept only as the fastest allowed point, no other point possibly as
            # fast, none in time either (the full decision's lead: ``least_wait``). Late at every
            # point, the full decision counts the queue from now (``_choose``), so the fastest is
            # bounded with the least wait from now: bounded with the led wait instead (the queue
            # drained by a write that is not made), 32 apps' first frames at 120 fps, each late at
            # every point behind the others' GPU work, each took the full decision at the top
            # point (0.2-0.7 ms with 30 frames in flight, 10 ms of the daemon at their onset)
            beyond = predicted * (1 + 1e-9) + 1e-12
            in_time = deadline * (1 + 1e-9) + 1e-12
            least_now = None  # computed only where the led wait does not settle it (never less)
            for stair, delay, _ in stairs:
                fastest = _delayed(stair.f_lat[0] * corr, delay, old)
                if fastest + least_wait <= in_time:
                    return None
                if fastest + least_wait <= beyond:
                    if least_now is None:
                        least_now = self._least_wait_now(ask) if self._frames else 0.0
                    if fastest + least_now <= beyond:
                        return None
            return cur, False, predicted, wait
        for stair, delay, _ in stairs:
            limit = _latency_limit(deadline - least_wait, delay, old)
            # a little wider than the exact limit: the bound may only err on the low side
            limit_ms = math.inf if corr <= 0 else limit / corr * (1 + 1e-9) + 1e-12
            if (stair.least_energy(limit_ms) + least_other) * (1 + hysteresis) < energy_cur:
                return None
        return cur, True, predicted, wait

    def _groups(self, ordered: SortedPoints, cur_point: tuple[int, ...]) -> tuple:
        """(index of the point in force, whether it is allowed, [(staircase, delay)] per group)."""
        cur = self._index(cur_point)
        equal = ordered.points == np.array(cur_point)
        same = np.ones(len(equal), dtype=bool)
        stairs = []
        longer: list[int] = []  # the domains a group's points share with the point in force
        for k in sorted(range(len(self.domains)), key=lambda k: -self._actuation_list[k]):
            stair = Staircase(ordered.lat, ordered.energy, same & ~equal[:, k])
            if len(stair):
                stairs.append((stair, self._actuation_list[k], tuple(longer)))
            same &= equal[:, k]
            longer.append(k)
        return cur, ordered.allowed[cur], stairs

    def _dwelling(self, now: float) -> bool:
        """Whether the point in force is kept while it meets the deadline and serves the frames in
        flight (only a raise goes through):

        * for ``lower_dwell_ms`` after a write of ours changed it. Frames of several apps come and
          go every few milliseconds, and the cheapest point serving those in flight went down with
          each lull and up with the next frame, two writes each time (measured: 32 apps at 120 fps,
          500 writes in 3 s, 0.1% of the decisions on schedule behind them). A change seen at a
          refresh (a cap, another agent) starts no dwell;
        * while the apps sharing the GPU need more of it than it has (``GpuShare.overloaded``):
          their frames are late at every point, and a frame that finds the queue short for a
          moment does not make a cheaper point hold; the next frames take the fastest again.
          Measured with 32 apps at 120 fps on the SD888's GPU (20 ms deadline): a write down and
          one up every 60-700 ms, each pair ~20 frames off their schedule behind it; a dwell that
          doubled after each such pair still let 8 pairs through in 3 s. Apps whose work fits
          are not held by this: they take turns at the points each needs."""
        return now - self._changed_at < self.settings.lower_dwell_ms / 1e3 or self._share.overloaded()

    def _hysteresis(self, ask: _Ask) -> float:
        """How much more energy the pair in force may cost before it is changed. Higher while another
        app's frame is in flight: each app's best pair differs, and a write per frame costs a round
        trip during which the other apps' frames start at whatever runs. (Only then: an app that
        is not running frames cannot hold another app on its pair.)"""
        s = self.settings
        shared = any(f.app != ask.app for f in self._frames.values())
        return max(s.hysteresis, s.shared_hysteresis) if shared else s.hysteresis

    def _active_caps(self, now: float) -> np.ndarray:
        """The caps decisions keep to. A cap hidden by our own pin (pinned limits at or under it
        show only the pin) is assumed for ``cap_recheck_s``, then asked past once: the kernel's
        read-back of that request shows the cap again (the next check waits twice as long), or
        that it has lifted. Caps the kernel's limits show (the userspace governor, or our request
        standing above them) need no such check: their lift shows at the next read-back; nor do
        the caps a thermal cooling device shows (kept while the hidden one is asked past)."""
        if now < self._unhide_at - 1e-6:  # none due (the margin: rounding of the sum)
            return self._caps
        # the same answer until the next hidden cap falls due (or the caps or their timers change)
        found = self._active
        if found is not None and found[1] <= now < found[2]:
            return found[0]
        hidden = now - self._blind_since > self._recheck_s
        caps = np.where(hidden, self._cool, self._caps) if hidden.any() else self._caps
        due = (self._blind_since + self._recheck_s)[~hidden]
        self._active = (caps, now, float(due.min()) - 1e-6 if len(due) else math.inf)
        return caps

    def _predict(self, ask: _Ask) -> np.ndarray:
        """Corrected latency at every point, counting the actuation delay: until a changed domain
        takes its new frequency (``a`` ms), the frame runs at what runs now, so a frame that needs
        ``L_old`` there has done ``a / L_old`` of its work when the new point lands (a raise helps
        less than its latency says)."""
        lat = ask.lat * ask.corr
        running = self._running(ask.now)
        pending = np.maximum(self._lands_at - ask.now, 0.0) * 1e3
        delay = np.where(self.points != np.array(self._cur), self._actuation, pending).max(axis=1)
        if not delay.any():
            return lat
        old = float(lat[self._index(running)])
        if old <= 0:
            return lat + delay
        mixed = np.where(delay >= old, old, delay + (1.0 - np.minimum(delay / old, 1.0)) * lat)
        # a point slower than what runs now is not counted faster for its first moments: the write
        # and its read-back may take longer than the change itself
        return np.maximum(mixed, lat)

    def _predict_at(self, ask: _Ask, i: int) -> float:
        """``_predict(ask)[i]`` for one point, without the whole grid (the same float operations)."""
        lat = float(ask.lat[i]) * ask.corr
        values, now = self._geometry.values[i], ask.now
        if now >= self._landed_by and values == self._cur:  # nothing changes, nothing pending
            return lat
        delay = 0.0
        for v, c, act, lands in zip(values, self._cur, self._actuation_list, self._lands_at, strict=True):
            d = act if v != c else max(lands - now, 0.0) * 1e3
            if d > delay:
                delay = d
        if delay == 0.0:
            return lat
        return _delayed(lat, delay, float(ask.lat[self._index(self._running(now))]) * ask.corr)

    def _queued_ahead(self, ask: _Ask) -> list[_Frame]:
        """Other apps' frames in flight whose GPU work the frame queues behind, in the order they
        started (a frame started after it queues behind it)."""
        others = [f for k, f in self._frames.items() if f.app != ask.app and k != ask.frame
                  and f.gpu_ms is not None and f.answered and f.started <= ask.now]
        if len(others) > 1:
            others.sort(key=_started)
        return others

    def _busy_s(self, f: _Frame) -> np.ndarray:
        """Frame ``f``'s GPU work (s) at every candidate's frequency: the point chosen is what the
        work queued ahead runs at from then on, a raise speeding it up as much as a cut slows it.
        (Counting it never shorter than at its own point, as before, predicted a detector's frame
        decided behind a decoder's token to wait 25-31 ms where it waited none: the token's work
        went at the raised point. The tokens that followed were then given the top point to save
        a frame that had already finished: SD888 detector + decoder at 1.20 / 1.40x the joint
        oracle, 1.13 / 1.09x with the work at the candidate's speed.) Cached on the frame."""
        if f.busy is None:
            f.busy = f.gpu_ms / 1e3
        return f.busy

    def _queue_waits(self, ask: _Ask, leads: np.ndarray | None = None) -> np.ndarray:
        """Per point, the wait ``_choose`` counts: at the point in force the frame starts now;
        at any other the write comes first, and the frame starts once it is done (``_write_lead_s``
        later, or the lead of the kind of write it takes where that has one of its own:
        ``_note_write_took``), the work queued ahead running on at the point in force meanwhile. Counted from now, a
        decoder's token asked just after a detector's frame started was predicted to wait all of
        that frame's GPU work (18 ms at a cheap point): its write took 5 ms, during which a third
        of it ran; the token was given the top GPU clock it did not need (demo: 1.2x the joint
        oracle's energy for the assistant in steady state).

        Where the frame is late at every point counted from now, the lead counts only once the
        apps' rates are known (``GpuShare.total``) and only to find a point in time; with none, the
        choice is the least late point without it (``_choose``). Not at all while the apps sharing
        the GPU need more of it than it has (``GpuShare.overloaded``): there the queue ahead never
        drains and the lead made a cheaper point look in time, so each frame wrote (32 apps x
        120 fps: 2755 writes in 3 s, the daemon's CPU spent on them, no frame decided on schedule).
        ``leads``: each point's lead (``_leads_s``) where the caller has them already."""
        n = len(self.points)
        now_wait = self._queue_wait(ask)
        lead = self._write_lead_s_now()
        if lead <= 0.0 or not isinstance(now_wait, np.ndarray):
            return np.broadcast_to(now_wait, n)
        if leads is None:
            leads = self._leads_s()
        wait = now_wait  # a fresh array: at the point in force (no lead) the wait from now
        for value in np.unique(leads).tolist():  # one computation per lead the points take
            if value > 0.0:
                at = leads == value
                wait[at] = self._queue_wait(ask, value)[at]
        return wait

    def _queue_wait(self, ask: _Ask, lead_s: float = 0.0) -> np.ndarray | float:
        """Per point, how long the frame waits behind other apps' GPU work in flight: their frames
        queue on the GPU in the order they started, each occupying it for its GPU busy time (from
        its start or when the one before it is done): what it has run by now at the points in
        force since it began (``_gpu_left``), the rest at the candidate's frequency
        (``_gpu_free_after``; ``_busy_s`` says why), a candidate other than the point in force
        adding the stall of its write. ``lead_s``: the frame starts that much later
        (``_queue_waits``).
        Counting the whole of a frame half done at the candidate's frequency made every cheaper
        GPU point look blocked behind work already finished (a decoder sharing the SD888's GPU
        with a detector was predicted to wait up to 7 ms where it waited none)."""
        others = self._queued_ahead(ask)
        if not others:
            return 0.0
        free = np.full(len(self.points), -np.inf)
        now = ask.now + lead_s
        for f in others:
            begin = np.maximum(free, f.gpu_from)
            ahead = begin >= now  # not begun by now: all of it at the candidate's frequency
            busy = self._busy_s(f)
            if ahead.all():
                free = begin + busy
                continue
            # where it has begun, it began at one time whatever the candidate (the frames before
            # it are done by then, each at what ran): one account of what it ran since
            left, done = self._gpu_left(f, float(begin[~ahead][0]), now)
            free = np.where(ahead, begin + busy, now + left * busy if left > 0.0 else done)
        # a point other than the one in force is written first: its transition stalls the work
        # queued ahead that is still running
        free = np.where(free > now, free + self._stalls_to(), free)
        free -= now
        np.maximum(free, 0.0, out=free)
        free *= 1e3
        return free

    def _change_stall_s(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        """How long a change from ``before`` to ``after`` stalls the work running (s): the longest
        transition latency of the domains it changes."""
        stall = 0.0
        for b, a, s in zip(before, after, self._stall_s.tolist(), strict=True):
            if b != a and s > stall:
                stall = s
        return stall

    def _stalls_to(self) -> np.ndarray:
        """Per point, the stall a write to it from the point in force causes (s), cached with it."""
        cur, stalls, _ = self._stall_to
        if cur != self._cur:
            stalls = np.where(self.points != np.array(self._cur), self._stall_s, 0.0).max(axis=1)
            self._stall_to = (self._cur, stalls, None)
        return stalls

    def _queue_free(self, ask: _Ask, busy_s) -> float:
        """When the GPU is free of the work queued ahead of ``ask`` (s; -inf with none), each frame's
        remaining work at ``busy_s(f)`` (``_gpu_free_after``)."""
        free = -math.inf
        now = ask.now
        for f in self._queued_ahead(ask):
            free = _gpu_free_after(free, f.gpu_from, busy_s(f), lambda begin, f=f: self._gpu_left(f, begin, now), now)
        return free

    def _queue_wait_at(self, ask: _Ask, i: int) -> float:
        """``_queue_wait(ask)[i]`` for one point (the same float operations)."""
        free = self._queue_free(ask, lambda f: float(f.gpu_ms[i]) / 1e3)
        if free > ask.now:
            free = free + float(self._stalls_to()[i])
        return max(free - ask.now, 0.0) * 1e3

    def _past_stalls(self, k: int, begin: float, until: float) -> float:
        """When work beginning at ``begin`` first makes progress: the stalls of the changes at or
        before it (the history up to index ``k``, ``_in_force_at(begin)``) that reach past
        ``begin`` hold it until they end, no later than ``until``. Under ``_lock``."""
        history = self._history
        t = begin
        j, longest = k, self._stall_longest
        while j >= 0 and history[j][0] + longest > begin:
            stalled = history[j][0] + self._change_stall_s(history[j][1], history[j][2])
            if stalled > t:
                t = stalled if stalled < until else until
            j -= 1
        return t

    def _in_force_at(self, t: float) -> tuple[int, tuple[int, ...]]:
        """(index in the history of the last change at or before ``t``, -1 if none is remembered;
        the point in force at ``t``). Under ``_lock``."""
        history = self._history
        k = len(history) - 1
        while k >= 0 and history[k][0] > t:
            k -= 1
        return k, history[k][2] if k >= 0 else (history[0][1] if history else self._cur)

    def _gpu_left(self, f: _Frame, begin: float, until: float) -> tuple[float, float]:
        """The share of frame ``f``'s GPU work not done by ``until`` if it began at ``begin``, and
        when it was done (when none is left): it went at 1 / G(p) at each point p in force
        meanwhile, G its GPU busy time there (the history of changes). Counted at its own point
        throughout, a detector's frame whose point a decoder's write lowered was counted done
        3-4 ms before it was, and the tokens queued behind it waited that much more than
        predicted (demo, the first second: 15 tokens late). Under ``_lock``."""
        gpu_ms = f.gpu_ms
        history = self._history
        k, point = self._in_force_at(begin)
        done = 0.0  # the share of its GPU work done by t
        t = self._past_stalls(k, begin, until)
        for at, before, after in itertools.islice(history, k + 1, None):
            if at >= until:
                break
            if at > t:
                g = float(gpu_ms[self._index(point)]) / 1e3
                if g <= 0.0 or done + (at - t) / g >= 1.0:
                    return 0.0, t + (1.0 - done) * g if g > 0.0 else t
                done += (at - t) / g
                t = at
            point = after
            # the change stalls the work running for its transition latency (each change of a
            # memory clock: 1 ms on the SD888, 1-3 ms of every wait behind another app's frame)
            stalled = at + self._change_stall_s(before, after)
            if stalled > t:
                t = stalled if stalled < until else until
        if until <= t:
            return 1.0 - done, math.inf
        g = float(gpu_ms[self._index(point)]) / 1e3
        if g <= 0.0 or done + (until - t) / g >= 1.0:
            return 0.0, t + (1.0 - done) * g if g > 0.0 else t
        return 1.0 - (done + (until - t) / g), math.inf

    def _in_flight_at(self, ask: _Ask, i: int) -> tuple[float, float, bool, float, float] | None:
        """What the frames in flight make of point ``i``, in one pass over them: None if it does
        not serve them all (``_serves_in_flight(ask)[i]`` false), else (``_queue_wait(ask)[i]``,
        a lower bound of ``_queue_waits(ask)`` at every point, whether another app has a frame in
        flight (the shared hysteresis), ``_energy_in_flight(ask)[i]``, the least the work in flight
        can take at any point), with the same float operations. The bound is the same queue with
        each frame's remaining work at its least GPU time over the grid, the least the full
        decision counts for it at any point (the recurrence grows with each busy time, rounding
        included)."""
        now, app, me = ask.now, ask.app, ask.frame
        # (started, frame id, GPU time at i, the frame, least over the grid, when its GPU
        # work can begin): sorted as tuples,
        # the id keeps frames that started at once in the order they were registered, as the full
        # decision's stable sort
        queued: list[tuple[float, int, float, float, float, float]] = []
        shared = False
        energy_i, least_other = float(ask.energy_mj[i]), 0.0
        # per point asked for: whether point i keeps it (frames no point can save any more keep at
        # least what they asked for): with many apps' frames late at once, most share a point
        keeps: dict[tuple[int, ...], bool] = {}
        stall_i = float(self._stalls_to()[i])
        for k, f in self._frames.items():
            if k == me:
                continue
            at = f.at
            if at is None or at[0] != i:  # its latency and GPU time at i: the same i frame after frame
                at = f.at = (i, float(f.lat[i]) if f.lat is not None else 0.0,
                             float(f.gpu_ms[i]) if f.gpu_ms is not None else 0.0)
            started = f.started
            if f.app != app:
                shared = True
                if f.gpu_ms is not None and f.answered and started <= now:
                    queued.append((started, k, at[2], f, _gpu_least_ms(f), f.gpu_from))
            if f.lat is None:
                continue
            wait = f.wait_ms
            own = f.predicted_ms - wait
            if own < 1e-6:
                own = 1e-6
            left = 1.0 - ((now - started) * 1e3 - wait) / own if f.answered else 1.0
            left = 0.0 if left < 0.0 else 1.0 if left > 1.0 else left
            if f.energy is not None and left > 0.0:
                energy_i += left * float(f.energy[i])
                least_other += left * f.least_energy
            end = started + f.deadline_ms / 1e3
            corr = f.corr
            # a write to i stalls the work under way (``_serves_in_flight``)
            start = now + stall_i if f.answered and left > 0.0 else now
            if start + left * (at[1] * corr) / 1e3 <= end:
                continue
            least = f.lat_sorted[0] if f.lat_sorted else float(f.lat.min())
            if now + left * (least * corr) / 1e3 <= end:
                return None  # some point meets this frame's deadline, not this one
            kept = keeps.get(f.point)
            if kept is None:
                kept = keeps[f.point] = all(v >= min(p, c) for v, p, c in zip(
                    self._geometry.values[i], f.point, self._caps.tolist(), strict=True))
            if not kept:
                return None  # no point can: the frame keeps at least the point it asked for
        if not queued:
            return 0.0, 0.0, shared, energy_i, least_other
        if len(queued) > 1:
            queued.sort()
        least_free = -math.inf
        free = -math.inf
        # the bound for every other point: their frame starts after the write (``_queue_waits``)
        later = now + self._write_lead_max_s_now()
        for _, _, gpu, f, least_ms, gpu_from in queued:
            least_free = _gpu_free_after(least_free, gpu_from, least_ms / 1e3,
                                         lambda begin, f=f: self._gpu_left(f, begin, later), later)
            free = _gpu_free_after(free, gpu_from, gpu / 1e3, lambda begin, f=f: self._gpu_left(f, begin, now), now)
        if free > now:  # a write to i stalls the work still running (``_queue_wait``)
            free = free + float(self._stalls_to()[i])
        free = (free - now) * 1e3
        least_free = (least_free - later) * 1e3
        return (free if free > 0.0 else 0.0), (least_free if least_free > 0.0 else 0.0), shared, energy_i, least_other

    def _least_wait_now(self, ask: _Ask) -> float:
        """A lower bound of ``_queue_wait(ask)`` over every point: the same queue from now with each
        frame's GPU work at its least busy time over the grid and no write's stall
        (``_gpu_free_after`` grows with the busy time, rounding included)."""
        return max(self._queue_free(ask, lambda f: _gpu_least_ms(f) / 1e3) - ask.now, 0.0) * 1e3

    def _sorted_lat(self, grid: _Grid, level: int) -> list[float]:
        """The grid's latencies at one host level in ascending order (computed once per grid and level)."""
        found = grid.sorted_lat.get(level)
        if found is None:
            found = grid.sorted_lat[level] = np.sort(grid.latency_ms[level]).tolist()
        return found

    @staticmethod
    def _left_and_end(f: _Frame, now: float) -> tuple[float, float]:
        """The share of frame ``f``'s own work not yet done (by its prediction; all of it while its
        decision is not answered) and its deadline (s)."""
        if not f.answered:
            return 1.0, f.started + f.deadline_ms / 1e3
        own = max(f.predicted_ms - f.wait_ms, 1e-6)
        left = min(max(1.0 - ((now - f.started) * 1e3 - f.wait_ms) / own, 0.0), 1.0)
        return left, f.started + f.deadline_ms / 1e3

    def _serves_in_flight(self, ask: _Ask) -> np.ndarray | bool:
        """Points at which every frame in flight still meets its deadline: its work not yet done
        (the share of its predicted time that has not elapsed) at the point's latency, after the
        stall a write to the point causes (``_stalls_to``: the transition latency of the domains
        it changes; none at the point in force). A frame that no point can save any more (even
        without a stall) keeps at least the point it asked for.

        The stalls used to be left to the noise margin alone: a write was taken that left a frame
        under way late by its stall (the demo writes on most frames, and the camera's frames
        across a change of the SD888's memory clock ran 5% over the prediction against 1% for the
        rest). A write now answers for the stall it causes where it is decided. The margin still
        sees the stalls: with it learning from the time without them, the demo's assistant ran
        1.25-1.75% of its tokens late, 2-3 times more than before (the stalls it cannot see
        coming: its own write's, a cap's).

        Whether a frame meets its deadline at a point grows with the point's latency alone for one
        stall, so its points of one stall are those up to a threshold latency, found by bisection on
        its grid's sorted latencies (the exact test on the neighbours); frames of one grid and level
        share the tightest threshold per stall: a few array comparisons per grid in flight, not one
        per frame."""
        ok: np.ndarray | bool = True
        now = ask.now
        classes = self._stall_classes()
        tightest: dict[int, list] = {}  # id(sorted latencies) -> [latency array, thresholds per class]
        for k, f in self._frames.items():
            if k == ask.frame or f.lat is None:
                continue
            left, end = self._left_and_end(f, now)
            corr = f.corr
            s = f.lat_sorted if f.lat_sorted is not None else np.sort(f.lat).tolist()
            if not now + left * (s[0] * corr) / 1e3 <= end:  # no point can save it any more
                ok = ok & np.all(self.points >= np.minimum(np.array(f.point), self._caps), axis=1)
                continue
            entry = tightest.get(id(s))
            if entry is None:
                entry = tightest[id(s)] = [f.lat, [s[-1]] * len(classes), s[-1]]
            if f.answered and left > 0.0:  # a write stalls only work under way
                thresholds = [_threshold(s, now + stall, end, left, corr) for stall, _ in classes]
            else:
                thresholds = [_threshold(s, now, end, left, corr)] * len(classes)
            for c, threshold in enumerate(thresholds):
                if threshold < entry[1][c]:
                    entry[1][c] = threshold
        for lat, thresholds, slowest in tightest.values():
            for (_, members), threshold in zip(classes, thresholds, strict=True):
                if threshold < slowest:  # else every point of the class meets them
                    ok = ok & (~members | (lat <= threshold))
        return ok

    def _stall_classes(self) -> list[tuple[float, np.ndarray]]:
        """The stalls a write from the point in force can cause, each with the points whose write
        causes it (``_stalls_to``), cached with them."""
        stalls = self._stalls_to()
        classes = self._stall_to[2]
        if classes is None:
            classes = [(float(v), stalls == v) for v in np.unique(stalls)]
            self._stall_to = (self._cur, stalls, classes)
        return classes

    def _floor(self) -> tuple[int, ...]:
        """Per domain, the highest frequency a frame whose pair was not written yet asked for."""
        asked = [f.point for f in self._frames.values() if f.pending]
        if not asked:
            return (0,) * len(self.domains)
        return tuple(max(col) for col in zip(*asked, strict=True))

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
            self._read_state(now)
        except BackendUnavailable:
            return
        self._sample_power()

    def _read_state(self, now: float) -> bool:
        """Read what is in force and each domain's max (holding ``_io``); True if a cap changed."""
        state = self.backend.state()
        eff = self._read_point(state)
        with self._lock:
            self._stale_at = None
            self._read_at = now
            caps = self._caps.copy()
            for k, d in enumerate(self.domains):
                self._observe(k, state[d].max, "ok", state[d].cooling_cap)
            if eff != self._cur:
                log.info("frequencies in force now %s", self._describe(eff))
                self._note_change(self._cur, eff, now)
                self._cur = eff
            return not np.array_equal(caps, self._caps)

    def _describe(self, point: tuple[int, ...]) -> str:
        units = {"cpu": "kHz", "gpu": "Hz"}
        return " / ".join(f"{d} {v} {units.get(d, '')}".strip() for d, v in zip(self.domains, point, strict=True))

    def _write(self, targets: dict[str, int]):
        """Apply new frequencies through the backend, naming only the domains that change."""
        return self.backend.apply(targets)

    def _apply(self, point: tuple[int, ...], ask: _Ask) -> tuple[tuple[int, ...], list[str]]:
        """Write the domains of ``point`` that differ from what is in force, and learn from the
        settled read-back what runs and each domain's cap. A write that finds a cap or a clock that
        cannot reach its target is followed by a decision among what the hardware allows (each
        round sets a cap or rules out a frequency). Called holding ``_io`` (not ``_lock``): the
        writes may be slow. Returns the point in force, as the kernel shows it."""
        notes: list[str] = []
        try:
            with self._lock:
                if ask is not None and ask.seen is not None and self._cur != ask.seen:
                    # another decision's write went first: decide again from what is in force now
                    point = self._choose_now(ask)
                    ask.seen = self._cur
            if time.monotonic() - self._read_at > FRESH_READ_S and self._read_state(time.monotonic()):
                # a cap set in since the last read-back: decide again under it before writing
                with self._lock:
                    point = self._choose_now(ask)
            # each round that does not end it sets a cap or rules out a frequency: bounded by the tables
            for _ in range(sum(len(t) for t in self.tables) + 1):
                res = self._write_point(point)
                if res is None:
                    break
                notes += res.notes
                if not (res.capped or res.unreachable):
                    break
                with self._lock:
                    # decided again as of now: what the last write changed has landed or will soon
                    # (with the frame's old start time its changes would count as still pending)
                    point = self._choose_now(ask)
            with self._lock:
                # frames decided while this write was under way (answered with the old pair) asked
                # for more: give it to them, within the caps
                raise_to = self._raised_to(self._floor())
                for f in self._frames.values():
                    f.pending = False
                raise_ok = bool(self._reachable[self._index(raise_to)])
            if raise_ok:
                self._write_point(raise_to)
        except BackendUnavailable as exc:
            # keep serving: the frame runs at whatever is in force; retried on the next frame
            notes.append(f"not applied: {exc}")
        return self._cur, notes

    def _raise_to_joined(self) -> None:
        """Holding ``_io``: the frames that joined a write (started at the old pair) need a point,
        decided once for all of them as of now: the least energy for the work in flight among the
        points that keep every frame in flight in time (each with the share of its work left,
        ``_serves_in_flight``; a choice for the latest joiner as if asked now counted its
        deadline from now, not from its start). Where it asks for more than what is in force,
        give it, within the caps; again for those that joined during that raise. Each raise
        lifts some domain (bounded by the tables); frames asked once none is left wait for the
        write's end."""
        try:
            for _ in range(sum(len(t) for t in self.tables) + 1):
                with self._lock:
                    joined, self._joined = self._joined, False
                    raise_to = self._raised_to(self.points[self._choose(self._in_flight_ask())[0]]) \
                        if joined else self._cur
                    if raise_to == self._cur or not self._reachable[self._index(raise_to)] or not self._started:
                        self._joinable = False
                        return
                self._write_point(raise_to)
        except BackendUnavailable as exc:  # keep serving: retried on the next frame that writes
            log.warning("raising the point for the frames that joined a write: %s", exc)
        finally:
            with self._lock:
                self._joinable = False

    def _raised_to(self, floor) -> tuple[int, ...]:
        """What is in force, raised in each domain where ``floor`` asks for more, within the caps
        (under ``_lock``)."""
        floor = np.minimum(np.asarray(floor), self._caps)
        return tuple(int(max(f, e)) for f, e in zip(floor, self._cur, strict=True))

    def _in_flight_ask(self) -> _Ask:
        """A decision as of now with no frame of its own: only the frames in flight count."""
        n = len(self.points)
        return _Ask(np.zeros(n), np.zeros(n), None, 1.0, math.inf, time.monotonic(), "", frame=-1)

    def _choose_now(self, ask: _Ask) -> tuple[int, ...]:
        """The point ``ask`` gets when decided again as of now (under ``_lock``)."""
        ask.now = time.monotonic()
        return tuple(int(v) for v in self.points[self._choose(ask)[0]])

    def _write_point(self, point: tuple[int, ...]):
        """Write the domains of ``point`` not in force; update what runs and the caps from the
        read-back. Returns the backend's result, None when nothing differed."""
        changes = {d: v for d, v, c in zip(self.domains, point, self._cur, strict=True)
                   if v != c or d not in self._held}
        if not changes:
            return None
        with self._lock:
            self._target = tuple(changes.get(d, t) for d, t in zip(self.domains, self._target, strict=True))
            self._written |= set(changes)
            self._write_begins()  # frames asked meanwhile wait for it (``before_frame``)
            self.writes += 1
            for k, d in enumerate(self.domains):
                if (d in changes and self._mechanism.get(d) == "minmax" and changes[d] <= self._shown[k]
                        and not math.isfinite(self._blind_since[k])
                        and not (self._has_cooling[k] and math.isinf(self._shown[k]))):
                    self._blind_since[k] = time.monotonic()
                    self._hidden_changed()
        at = time.monotonic()
        try:
            res = self._write(changes)
        except BaseException:
            with self._lock:
                self._write_ended()
            raise
        with self._lock:
            try:  # ended here, whatever happens, with what it put in force recorded under the same lock:
                # a frame decided in between would otherwise see no write under way and the old point
                self._held |= set(changes)
                self._all_held = len(self._held) == len(self.domains)
                self._read_at = time.monotonic()
                eff = tuple(int(res.effective.get(d, c)) for d, c in zip(self.domains, self._cur, strict=True))
                for k, domain in enumerate(self.domains):
                    if domain in res.unreachable:
                        self._reachable &= self.points[:, k] != res.target[domain]
                        self._reachable_key = self._reachable.tobytes()
                        log.warning("%s: %s cannot be reached (the clock runs %s); planning without it",
                                    domain, res.target[domain], res.unreachable[domain])
                    if domain in res.limits:
                        self._observe(k, res.limits[domain][1], res.conditions.get(domain, "ok"),
                                      res.cooling_caps.get(domain))
                    elif domain in res.cooling_caps:  # not written: its limits unchanged, its cooling read
                        self._observe(k, int(self.tables[k][-1]), "pending", res.cooling_caps[domain])
                self._note_change(self._cur, eff, at)
                if eff != self._cur:  # our own change (a cap or another agent seen at a refresh starts no dwell)
                    self._changed_at = at  # a dwell starts (``_dwelling``)
                self._cur = eff
            finally:
                self._write_ended()
        return res

    def reply_sent(self, frame: int, at: float | None = None) -> None:
        """The reply of frame ``frame``, decided on the write path, left for its app at ``at``
        (monotonic s, now if None): the frame cannot have begun before. It joined the GPU queue
        when it was started inside its write (so the next write decides with it), but the
        reply that follows can be held for milliseconds on a busy machine (the demo: 1.1 ms in
        the median, up to 14 ms, between the two, its app's frame beginning 0.5-1 ms after the
        reply). Meanwhile another app's frame, answered first, ran first on the board while the
        queue put it behind: a token predicted to wait none waited 13.5 ms, and the camera's
        next frame, predicted to wait none behind that token, waited 10.7 ms. From here its
        place in the queue and its work count from the reply. The daemon calls this for the
        replies it sends after a write; in process the reply is the return."""
        at = time.monotonic() if at is None else at
        with self._lock:
            f = self._frames.get(frame)
            if f is not None and f.decided is not None:
                self._note_write_took(at - f.decided[0], f.decided[1])
                f.decided = None
            if f is not None and f.answered and at > f.started:
                f.started = at
                if f.gpu_from < at:
                    f.gpu_from = at

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
            if not failed:
                self._ahead_done(f, latency_ms)
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
                if f.predicted_ms <= f.deadline_ms:
                    # late though predicted in time: something may have changed under us (a cap):
                    # re-read before long (a frame known to be infeasible tells nothing new)
                    soon = time.monotonic() + MISS_REFRESH_S
                    self._stale_at = soon if self._stale_at is None else min(self._stale_at, soon)
            if self.recorder is not None:
                self._record(f, frame, latency_ms)
            limit = self.settings.outlier_ratio * max(f.predicted_ms, f.deadline_ms)
            if latency_ms > limit:
                stats.outliers += 1
                return {"learned": False, "notes": [f"latency {latency_ms:g} ms is over {limit:g} ms "
                                                    f"({self.settings.outlier_ratio:g}x the prediction or "
                                                    "deadline): counted as late, not learned from"]}
            # waiting behind other apps' GPU work is added time, not a slower host. How long it
            # really waited is not reported: a short predicted wait is taken off, a frame that
            # may have waited longer is not learned from (its own time is unknown)
            waited = f.wait_ms > WAIT_LEARN_SHARE * latency_ms
            column, stalled_ms = f.column, 0.0
            last = self._history[-1][0] if self._history else -math.inf
            if last > f.started or last + self._stall_longest > f.started + f.wait_ms / 1e3:
                # the point in force changed while it ran (another app's decision, a cap), or a
                # change's stall reached into it: it is learned from against what it ran at (with
                # two apps taking turns, nearly every frame does: the demo's assistant learned from
                # 9 of its 400 frames), its stalls apart
                ran = self._ran_column(f, latency_ms)
                if ran is None:
                    return {"learned": False, "notes": ["the point in force changed while it ran, and what "
                                                        "it ran at is no longer known: not learned from"]}
                column, stalled_ms = ran
            if waited:  # its own time is known only as well as its wait: the noise margin alone
                self._correction(stats, f.model).add_tail_only(column, latency_ms - f.wait_ms)
                return {"learned": False, "notes": [f"predicted to wait {f.wait_ms:.3g} ms behind other "
                                                    "apps' GPU work: the noise margin learns from it, "
                                                    "the fit does not"]}
            self._correction(stats, f.model).add(column, latency_ms - f.wait_ms, stalled_ms)
            return {"learned": True}

    def _ran_column(self, f: _Frame, latency_ms: float) -> tuple[np.ndarray, float] | None:
        """Per host level, the latency that frame ``f``'s prediction comes to at the points it
        ran at, each for the time it was in force (its own work: from its start plus its
        predicted wait to its end), and the time changes stalled it meanwhile (ms). A frame whose
        work goes at rate 1 / (r L(p)) at point p, r its ratio to the prediction, ends when the
        shares sum to one: r = sum of dt / L(p), dt the time at p less the stalls of the changes
        (each stalls the work for its transition latency, as ``_gpu_left`` counts). So the frame
        compares with ``(measured - stalled) / sum(dt / L(p))``, which is L(p) for a frame at one
        point. Counted as its own slowness, the stalls of the other app's writes (1 ms for each
        change of the SD888's memory clock, on a 20 ms frame) raised the demo's camera to host
        levels 8-16 with no load at all, and its predictions at low CPU clocks with them. None
        when the changes it ran across are older than the history. Under ``_lock``."""
        if f.grid_lat is None:
            return None
        t0 = f.started + f.wait_ms / 1e3
        t1 = f.started + latency_ms / 1e3
        if t1 <= t0:
            return None
        history = self._history
        k, point = self._in_force_at(t0)
        if k < 0 and len(history) == history.maxlen:
            return None  # it started before the oldest change remembered
        work = None
        t = self._past_stalls(k, t0, t1)
        stalled = t - t0
        for at, before, after in itertools.islice(history, k + 1, None):
            if at >= t1:
                break
            if at > t:
                share = (at - t) * 1e3 / f.grid_lat[:, self._index(point)]
                work = share if work is None else work + share
                t = at
            point = after
            until = min(at + self._change_stall_s(before, after), t1)
            if until > t:
                stalled += until - t
                t = until
        if t1 > t:
            share = (t1 - t) * 1e3 / f.grid_lat[:, self._index(point)]
            work = share if work is None else work + share
        if work is None:
            return None  # stalled throughout: nothing to learn
        return (t1 - t0 - stalled) * 1e3 / work, stalled * 1e3

    def _ahead_done(self, f: _Frame, latency_ms: float) -> None:
        """Frame ``f`` has ended: the frames in flight that queued behind it on the GPU began their
        GPU work when its GPU work was done: when it ended, less the host work that follows its
        GPU work (its latency at the host's profiled speed less its GPU busy time at its point,
        the least it can be), never
        before its GPU work could begin. Without this the queue forgot, once ``f`` was reported,
        that it had held them: a decoder's token that had waited 10 ms behind a detector's frame
        was counted as done 10 ms before it was, and the detector's next frame, predicted to wait
        none, waited 7 ms; taken as noise, that wait raised its margin to 1.38 for the rest of the
        phase (SD888, detector + decoder). By the queue's own account instead (when it could
        begin, plus its GPU busy time), an error carried from frame to frame: apps taking turns
        on the GPU each queued behind the other, and each account began where the last, early
        one ended (demo, the first second: tokens waited 14 ms where 8 were predicted). Under
        ``_lock``."""
        if f.gpu_ms is None or not self._frames:
            return
        # when it ended: its start plus what it measured, never later than now (a report is sent
        # after the frame; a latency longer than that is not to be trusted here)
        end = min(f.started + latency_ms / 1e3, time.monotonic())
        if f.lat is not None:
            i = self._index(f.point)
            # at the host's profiled speed: the host slowdown the fit believes stretches it, and an
            # early fit's (host levels 13-16 with no load, the demo's first second) put the GPU's
            # end 4 ms early, the next frame's wait 4 ms short, and that error in its noise margin
            # for the rest of the run; a tail too short errs the other way, a wait predicted long
            own = f.grid_lat[0] if f.grid_lat is not None else f.lat
            tail = float(own[i]) - float(f.gpu_ms[i])
            if tail > 0.0:
                end -= tail / 1e3
        if end < f.gpu_from:
            end = f.gpu_from
        for g in self._frames.values():
            if f.started <= g.started < end and g.gpu_from < end:
                g.gpu_from = end

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
        app names become evictable, and the GPU share of those no other client uses stops counting
        (else it held the others' decisions for up to three of its periods). Returns the number
        of frames dropped."""
        with self._lock:
            gone = [k for k, f in self._frames.items() if f.owner is owner]
            for k in gone:
                del self._frames[k]
            for app in self._owner_apps.pop(owner, ()):
                stats = self._apps.get(app)
                if stats is not None:
                    stats.owners.discard(owner)
                    if not stats.owners:  # no frame of it will come: its GPU share holds no one back
                        self._share.forget(app)
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

    def _resume_and_apply(self, point: tuple[int, ...], ask: _Ask) -> tuple[tuple[int, ...], list[str]]:
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
                self._cur = self._from = self._read_point(state)
                self._target = self._cur
                self._written = set()  # the original limits are back: none of them is ours
                self._held, self._all_held = set(), False  # and the kernel's governors move the clocks
                for k, d in enumerate(self.domains):
                    self._observe(k, state[d].max, "ok")
                self._released = False
                # frames held while what is in force was unknown may join the write now
                if self.on_writes_done is not None:
                    self.on_writes_done(True)
            log.info("resuming: domains taken again")
        return self._apply(point, ask)

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
                        grid.reprice(self._learner.energy_mj(grid.energy_parts))
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
                c = max(users, key=lambda u: u[0])[1] if users else self._new_correction(m)
                models[m] = {"language_model": e.is_language_model, "correction": round(c.factor, 4),
                             "host_slowdown": c.host_slowdown, "samples": len(c.frames), "apps": len(users)}
                if e.is_language_model:  # the context buckets whose grid is ready (see _ask_ahead)
                    models[m]["context_buckets"] = sorted(b for k, b in self._grids if k == m)
            return {
                **self._status_frequencies(),
                "capped": bool(self._started and np.isfinite(self._caps).any()),
                "released": self._released,
                "models": models,
                "apps": {a: {"frames": s.frames, "misses": s.misses, "infeasible": s.infeasible,
                             "failed": s.failed, "outliers": s.outliers,
                             "corrections": {m: round(c.factor, 4) for m, c in s.corrections.items()}}
                         for a, s in self._apps.items()},
                "in_flight": len(self._frames),
                "writes": self.writes,
                "backend": self.backend.name,
                "backend_connected": self.backend.connected,
                **self.measured_power(),
                **self._power_learning_status(),
            }
