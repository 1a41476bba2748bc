"""What the same workload would have cost under other policies, on the virtual board's truth.

* ``performance``: every domain at its highest frequency (within a thermal cap);
* ``ondemand``: a load-following governor like schedutil: each domain's next frequency is the
  lowest one >= 1.25 x current frequency x utilisation of the last frame period;
* ``oracle``: per frame, the point (every domain the board has, memory included) with the least
  energy among those whose true (noise-free) latency meets the deadline, under that frame's
  conditions (context, background load, cap).
  It cannot miss by construction; ``misses_with_noise`` says how often its pick would have been
  late with the noise that frame really had, which a causal governor must leave headroom for;
* ``oracle_target``: the oracle at the miss target, the fair reference for a governor with that
  target: per frame the point of least energy whose latency with the (1 - target) quantile of the
  frame noise (per point, from the simulator's noise) meets the deadline, its misses counted with
  the noise that frame really had. What a governor that knew each frame's conditions (context,
  load, cap) but not its noise could do at best.

Frames are replayed with the same noise as the governed run where the policy allows it. Boards
without a GPU or a memory domain work the same way over the domains they have.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from dvfs_schema.board import BoardConfig
from dvfs_schema.domains import highest_at_most
from sysfs_backends.virtual.simulator import Simulator


class FrameTrace(BaseModel):
    """One frame as the app saw it: enough to replay it under another policy."""

    t_s: float
    deadline_ms: float
    period_ms: float
    context_len: int | None
    background_load: float
    capped: bool
    seed: int
    cpu_khz: int
    gpu_hz: int | None  # None on a board without a GPU
    latency_ms: float
    energy_j: float
    mem_hz: int | None = None  # the memory level in force (its unit); None on a board without one
    # where frames of several apps share the GPU and run over time (running_frame.RunningFrame):
    start_ns: int | None = None  # when the frame started (CLOCK_MONOTONIC, common to the apps)
    wait_ms: float = 0.0  # behind other frames' GPU work (part of latency_ms)
    noise: float | None = None  # its noise factor: latency / noise-free latency at any point
    slowdown: float = 1.0  # a known condition that stretched it (a burst), beside the noise


class PolicyResult(BaseModel):
    frames: int
    misses: int
    energy_j: float
    misses_with_noise: int | None = None


class PointGrid:
    """One model on a board as the references need it: every point of the board's domains (the
    memory level included: the governor may choose it, so the references must too), each domain's
    highest level under a thermal cap, and the noise-free latency and energy at every point
    (cached per context and background load). A board without a GPU or memory domain has the one
    'level' None there. Used by the replays below and by benchmarks/governor_dynamics.py."""

    def __init__(self, board: BoardConfig, sim: Simulator) -> None:
        tables = board.domain_tables
        self.board, self.sim = board, sim
        self.cpu = tables["cpu"]
        self.gpu = tables.get("gpu", [None])
        self.mem = tables.get("mem", [None])
        grids = np.meshgrid(self.cpu, [0 if g is None else g for g in self.gpu],
                            [0 if m is None else m for m in self.mem], indexing="ij")
        self.c, self.g, self.m = (a.ravel().astype(float) for a in grids)
        self.has_gpu, self.has_mem = board.gpu is not None, "mem" in tables
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def caps(self, capped: bool) -> tuple[int, int | None, int | None]:
        """The highest level of each domain a thermal cap allows (the tops when uncapped)."""
        sim = self.board.simulation
        if not capped or sim is None:
            return self.cpu[-1], self.gpu[-1], self.mem[-1]

        def under(table, cap):
            return table[-1] if table[-1] is None or cap is None else highest_at_most(cap, table)

        return (under(self.cpu, sim.thermal_cap_cpu_khz), under(self.gpu, sim.thermal_cap_gpu_hz),
                under(self.mem, sim.thermal_cap_mem_hz))

    def allowed(self, capped: bool) -> np.ndarray:
        """The points a thermal cap (or none) allows."""
        cap_c, cap_g, cap_m = self.caps(capped)
        return ((self.c <= cap_c) & ((self.g <= cap_g) if self.has_gpu else True)
                & ((self.m <= cap_m) if self.has_mem else True))

    def index(self, cpu_khz: int, gpu_hz: int | None, mem_hz: int | None) -> int:
        """The grid index of a point (a memory level not given: the top one, the default)."""
        at = (self.c == cpu_khz) & ((self.g == gpu_hz) if self.has_gpu else True)
        if self.has_mem:
            at &= self.m == (mem_hz if mem_hz is not None else self.mem[-1])
        return int(np.flatnonzero(at)[0])

    def run(self, cpu, gpu, mem, context_len: int | None, load: float, rng=None):
        """The simulator at one point or arrays of them, and the energy model's energy there."""
        gpu, mem = (gpu if self.has_gpu else None), (mem if self.has_mem else None)
        r = self.sim.run(cpu, gpu, context_len, rng, host_slowdown=1.0 + load, mem_hz=mem)
        return r, self.board.frame_energy_j(cpu, gpu, r.host_busy_ns, r.gpu_busy_ns, r.latency_ns, mem_hz=mem)

    def _truth(self, ctx: int | None, load: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (ctx, load)
        if key not in self._cache:
            r, e = self.run(self.c, self.g, self.m, ctx, load)
            self._cache[key] = (r.latency_ns / 1e6, e, r.gpu_busy_ns / 1e6)
        return self._cache[key]

    def at_with_gpu(self, ctx: int | None, load: float, step: int = 32) -> tuple[np.ndarray, ...]:
        """``at`` and the noise-free GPU busy time (ms) at every point: how long the frame holds a
        shared GPU."""
        if ctx is None:
            return self._truth(None, load)
        lo = ctx // step * step  # latency, energy and busy time are linear in the context between grid points
        w = (ctx - lo) / step
        return tuple(a + w * (b - a) for a, b in zip(self._truth(lo, load), self._truth(lo + step, load),
                                                       strict=True))

    def at(self, ctx: int | None, load: float, step: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free latency (ms) and energy (J) at every point for one frame's conditions."""
        lat, en, _ = self.at_with_gpu(ctx, load, step)
        return lat, en


def performance(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> PolicyResult:
    grid = PointGrid(board, sim)
    misses, energy = 0, 0.0
    for f in frames:
        c, g, m = grid.caps(f.capped)
        r, e = grid.run(c, g, m, f.context_len, f.background_load, np.random.default_rng(f.seed))
        misses += r.latency_ns[0] / 1e6 > f.deadline_ms
        energy += float(e[0])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


def ondemand(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> PolicyResult:
    """Each domain follows its own utilisation; the memory level follows the busier side's (a
    bandwidth monitor sees the traffic of whichever side is working)."""
    grid = PointGrid(board, sim)
    c, g, m = grid.cpu[-1], grid.gpu[-1], grid.mem[-1]
    misses, energy = 0, 0.0

    def follow(table, now, util):
        return now if now is None else next((x for x in table if x >= 1.25 * now * util), table[-1])

    for f in frames:
        cap_c, cap_g, cap_m = grid.caps(f.capped)
        c = min(c, cap_c)
        g = min(g, cap_g) if g is not None else None
        m = min(m, cap_m) if m is not None else None
        r, e = grid.run(c, g, m, f.context_len, f.background_load, np.random.default_rng(f.seed))
        lat_ns = float(r.latency_ns[0])
        misses += lat_ns / 1e6 > f.deadline_ms
        energy += float(e[0])
        period_ns = max(f.period_ms * 1e6, lat_ns)
        util_c, util_g = r.host_busy_ns[0] / period_ns, r.gpu_busy_ns[0] / period_ns
        c, g, m = follow(grid.cpu, c, util_c), follow(grid.gpu, g, util_g), follow(grid.mem, m, max(util_c, util_g))
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


NOISE_DRAWS = 400  # frames per point the noise quantile is taken over


def pick(ok: np.ndarray, allowed: np.ndarray, energy: np.ndarray, latency: np.ndarray) -> int:
    """The point of least energy among ``ok``; none: the fastest allowed (infeasible)."""
    if ok.any():
        return int(np.argmin(np.where(ok, energy, np.inf)))
    return int(np.argmin(np.where(allowed, latency, np.inf)))


def _noise(grid: PointGrid, f: FrameTrace, lat: np.ndarray) -> float:
    """The frame's own noise factor: recorded, or measured / noise-free at the point that ran it."""
    if f.noise is not None:
        return f.noise
    return (f.latency_ms - f.wait_ms) / lat[grid.index(f.cpu_khz, f.gpu_hz, f.mem_hz)]


def noise_quantile(grid: PointGrid, context_len: int | None, target: float, draws: int = NOISE_DRAWS,
                   seed: int = 12345, load: float = 0.0) -> np.ndarray:
    """Per point, the (1 - ``target``) quantile of latency / noise-free latency over ``draws`` frames
    of the simulator's noise (at ``context_len`` and background ``load``): the room a pick must
    leave to be late no more than ``target`` of the time."""
    base, _ = grid.at(context_len, load)
    rng = np.random.default_rng(seed)
    ratios = np.stack([grid.run(grid.c, grid.g, grid.m, context_len, load, rng)[0].latency_ns / 1e6 / base
                       for _ in range(draws)])
    return np.quantile(ratios, 1 - target, axis=0)


class NoiseQuantiles:
    """``noise_quantile`` at each background load a frame ran under, taken once per load.

    The tail depends on the load: with the host slowed, its outliers are on the critical path
    (MobileNetV2 on the SD888 at 1.9 GHz / 738 MHz: 1.015 at the 1% target without load, 1.16 at
    load 0.6). Planned with the no-load tail, a reference at a 1% target missed 4 of 60 frames of a
    load phase (until 2026-11-25): it was neither at its target nor a bound a governor holding the
    target can reach. Context changes the tail little (SmolLM-135M at 64 / 256 / 512 tokens: 1.016
    / 1.015 / 1.015 in the median over points), so one context stands for all."""

    def __init__(self, grid: PointGrid | None, context_len: int | None, target: float,
                 fixed: np.ndarray | None = None) -> None:
        self.grid, self.context_len, self.target = grid, context_len, target
        self._fixed = fixed
        self._by_load: dict[float, np.ndarray] = {}

    @classmethod
    def for_frames(cls, grid: PointGrid, frames: list[FrameTrace], target: float) -> NoiseQuantiles:
        """At the context of the first of ``frames`` (none: no context)."""
        return cls(grid, frames[0].context_len if frames else None, target)

    @classmethod
    def given(cls, q: np.ndarray) -> NoiseQuantiles:
        """A tail fixed by the caller for every load (a measured one, or a test's)."""
        return cls(None, None, 0.0, fixed=q)

    def at(self, load: float) -> np.ndarray:
        if self._fixed is not None:
            return self._fixed
        key = round(float(load), 3)
        if key not in self._by_load:
            self._by_load[key] = noise_quantile(self.grid, self.context_len, self.target, load=key)
        return self._by_load[key]


def oracle(board: BoardConfig, sim: Simulator, frames: list[FrameTrace],
           context_step: int = 32) -> PolicyResult:
    grid = PointGrid(board, sim)
    misses, noisy_misses, energy = 0, 0, 0.0
    for f in frames:
        lat, en = grid.at(f.context_len, f.background_load, context_step)
        lat = lat * f.slowdown
        budget = f.deadline_ms - f.wait_ms
        allowed = grid.allowed(f.capped)
        i = pick(allowed & (lat <= budget), allowed, en, lat)
        misses += lat[i] > budget
        # the same frame's noise applied to the pick
        noisy_misses += lat[i] * _noise(grid, f, lat) > budget
        energy += float(en[i])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4),
                        misses_with_noise=int(noisy_misses))


def oracle_target(board: BoardConfig, sim: Simulator, frames: list[FrameTrace], target: float,
                  context_step: int = 32, quantiles: NoiseQuantiles | None = None) -> PolicyResult:
    """``quantiles``: the model's ``NoiseQuantiles`` at ``target``, when the caller has them already."""
    # the quantiles' own grid when they have one (its latencies are computed once for both)
    grid = quantiles.grid if quantiles is not None and quantiles.grid is not None else PointGrid(board, sim)
    qs = quantiles if quantiles is not None else NoiseQuantiles.for_frames(grid, frames, target)
    misses, energy = 0, 0.0
    for f in frames:
        lat, en = grid.at(f.context_len, f.background_load, context_step)
        lat = lat * f.slowdown
        budget = f.deadline_ms - f.wait_ms
        allowed = grid.allowed(f.capped)
        need = lat * qs.at(f.background_load)
        j = pick(allowed & (need <= budget), allowed, en, need)
        misses += lat[j] * _noise(grid, f, lat) > budget  # with the noise the frame had
        energy += float(en[j])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


class _JointFrame:
    """One frame in the joint replay: its arrays over every point and its progress."""

    __slots__ = ("app", "k", "deadline_ms", "lat", "gpu", "energy", "need", "need_gpu", "scale",
                 "allowed", "top", "arrive", "start", "x", "y", "end", "energy_j")

    def __init__(self, app: int, k: int, f: FrameTrace, grid: PointGrid, q: np.ndarray | float, step: int,
                 seen: FrameTrace | None = None, q_seen: np.ndarray | float | None = None) -> None:
        """``seen``: the frame whose background load and slowdown the reference plans with (None:
        this frame's own), and ``q_seen`` the noise's quantile under that load."""
        def at(load: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            lat, en, gpu = grid.at_with_gpu(f.context_len, load, step)
            return lat, en, (gpu if grid.has_gpu else np.zeros_like(lat))

        lat, en, gpu = at(f.background_load)
        self.app, self.k, self.deadline_ms = app, k, f.deadline_ms
        self.lat, self.gpu, self.energy = lat * f.slowdown, gpu * f.slowdown, en * f.slowdown
        plan, q_plan = (f, q) if seen is None else (seen, q_seen)  # what the reference plans with
        lat_p, _, gpu_p = (lat, en, gpu) if plan.background_load == f.background_load else at(plan.background_load)
        self.need, self.need_gpu = lat_p * plan.slowdown * q_plan, gpu_p * plan.slowdown * q_plan
        self.scale = _noise(grid, f, self.lat)  # what the frame really takes (x the noise-free)
        self.allowed = grid.allowed(f.capped)
        self.top = grid.index(*grid.caps(f.capped))  # the highest point the cap in force allows
        self.arrive = self.start = self.end = None
        self.x = self.y = 0.0
        self.energy_j = 0.0


_EPS_MS = 1e-9  # events this close together are one (float rounding of the times)


def oracle_joint(board: BoardConfig, apps: list[tuple[Simulator, list[FrameTrace]]], target: float | None,
                 context_step: int = 32, quantiles: list[NoiseQuantiles] | None = None) -> list[PolicyResult]:
    """The oracle where one point at a time serves every frame in flight (several apps, one board).

    Per-frame oracles give each frame its own point, although frames of several apps overlap and
    one point is in force at a time: an optimistic bound no governor can reach there. This replay
    runs the apps' frames the way ``running_frame.RunningFrame`` runs them on the virtual board (a
    frame's progress at rate 1 / its latency at the point in force, one GPU queue in start order)
    and chooses the point when each frame arrives, knowing every frame's conditions (context, load,
    cap, slowdown) but not its noise: the point of least energy for the work in flight at which
    every frame in flight, planned with the (1 - ``target``) quantile of the noise at the frame's
    background load (None: no noise),
    meets its deadline, held until the next arrival; none: the point that is least late. Frames
    then run with the noise they really had. This is the governor's own structure (a decision
    before each frame, for all frames in flight) with perfect knowledge of everything but the
    noise. Frame transitions are free here. An app's frame arrives at its recorded start, or when
    its previous frame ends here, whichever is later. Frames need ``start_ns``; returns one result
    per app (``joint_frames``: per frame). ``quantiles``: each app's ``NoiseQuantiles`` at
    ``target``, when the caller has them already."""
    out = []
    for per_frame in joint_frames(board, apps, target, context_step, quantiles):
        out.append(PolicyResult(frames=len(per_frame), misses=sum(m for _, m in per_frame),
                                energy_j=round(sum(e for e, _ in per_frame), 6)))
    return out


def joint_frames(board: BoardConfig, apps: list[tuple[Simulator, list[FrameTrace]]], target: float | None,
                 context_step: int = 32, quantiles: list[NoiseQuantiles] | None = None,
                 at_top: bool = False, causal: bool = False) -> list[list[tuple[float, bool]]]:
    """``oracle_joint`` frame by frame: per app, each frame's (energy in J, late). ``at_top``: the
    same frames under the same queue at the highest point a cap allows instead (``performance``).

    ``causal``: each frame is planned with what its app's previous frame ran under (background
    load and slowdown; its own context and the cap in force, which a governor reads before the
    frame), not its own: everything a governor could have learned by the time it decides, perfectly,
    and nothing it could not. The plain replay sees a burst's or a load step's first frame coming;
    no governor does, so where conditions change it is a bound none reaches (at a slowdown of
    1.35x every burst's first frame is late for any point short of one 35% faster). This one is
    the bound for a governor that learns from measured frames: what is left between it and the
    plain one is the price of not seeing the future."""
    grids = [PointGrid(board, sim) for sim, _ in apps]
    if quantiles is not None:
        qs = quantiles
    else:
        qs = [NoiseQuantiles.for_frames(g, frames, target) if target is not None else None
              for g, (_, frames) in zip(grids, apps, strict=True)]

    def quantile(a: int, f: FrameTrace) -> np.ndarray | float:
        return qs[a].at(f.background_load) if qs[a] is not None else 1.0

    queues = [[_JointFrame(a, k, f, grids[a], quantile(a, f), context_step,
                           *((frames[k - 1], quantile(a, frames[k - 1])) if causal and k > 0 else ()))
               for k, f in enumerate(frames)]
              for a, (_, frames) in enumerate(apps)]
    t0_ns = min((f.start_ns for _, frames in apps for f in frames), default=0)
    starts = [[(f.start_ns - t0_ns) / 1e6 for f in frames] for _, frames in apps]  # ms from the first
    nxt = [0] * len(apps)  # each app's next frame to arrive
    prev_end = [-np.inf] * len(apps)
    flight: list[_JointFrame] = []  # arrived, not ended, in GPU-queue order
    point = None
    t = min((s[0] for s in starts if s), default=0.0)

    def arrival(a: int) -> float:
        if nxt[a] >= len(queues[a]) or (nxt[a] > 0 and queues[a][nxt[a] - 1].end is None):
            return np.inf  # none left, or its previous frame still runs
        return max(starts[a][nxt[a]], prev_end[a])

    def holder() -> _JointFrame | None:  # the frame whose GPU work holds the queue
        return next((f for f in flight if f.y < 1.0), None)

    while True:
        # the next event: an arrival, the GPU work of the queue's head ending, a frame ending
        t_arr = min((arrival(a) for a in range(len(apps))), default=np.inf)
        head = holder()
        events = [t_arr]
        if point is not None:
            if head is not None and head.start is not None:
                events.append(t + (1.0 - head.y) * head.gpu[point] * head.scale)
            events += [t + (1.0 - f.x) * f.lat[point] * f.scale for f in flight if f.start is not None]
        t_next = min(events)
        if not np.isfinite(t_next):
            break
        if point is not None:  # run every started frame from t to t_next at the point
            dt = t_next - t
            for f in flight:
                if f.start is None:
                    continue
                if f.y < 1.0 and f is head:  # its GPU work ends at t_next (within float rounding)
                    gpu_ms = f.gpu[point] * f.scale
                    f.y = 1.0 if t + (1.0 - f.y) * gpu_ms <= t_next + _EPS_MS else f.y + dt / gpu_ms
                lat_ms = f.lat[point] * f.scale
                done = t + (1.0 - f.x) * lat_ms <= t_next + _EPS_MS
                share = 1.0 - f.x if done else dt / lat_ms
                f.x += share
                f.energy_j += share * f.energy[point] * f.scale
                if done:
                    f.x, f.end = 1.0, t_next
        t = t_next
        for f in [f for f in flight if f.end is not None]:
            flight.remove(f)
            prev_end[f.app] = f.end
        arrived = False
        for a in range(len(apps)):
            while arrival(a) <= t:
                f = queues[a][nxt[a]]
                f.arrive = t
                nxt[a] += 1
                flight.append(f)
                arrived = True
        for f in flight:  # a frame runs once nothing ahead of it holds the GPU
            if f.start is None:
                f.start = t
                if f.gpu[0] <= 0:
                    f.y = 1.0
            if f.y < 1.0:
                break
        if arrived:
            point = flight[-1].top if at_top else _choose_joint(flight, t)
    return [[(f.energy_j, bool(f.end - f.arrive > f.deadline_ms + _EPS_MS)) for f in frames] for frames in queues]


def _choose_joint(flight: list[_JointFrame], t: float) -> int:
    """The point of least energy for the remaining work in flight at which every frame, planned
    with its quantile noise and the GPU queue in order, meets its deadline (None fits: least late)."""
    n = len(flight[0].lat)
    gpu_free = np.full(n, t)
    worst = np.full(n, -np.inf)  # the latest finish against its deadline, per point
    energy = np.zeros(n)
    for f in flight:
        if f.start is not None:
            begin = np.full(n, f.start)
            end = t + (1.0 - f.x) * f.need
            gpu_end = t + (1.0 - f.y) * f.need_gpu
        else:
            begin = np.maximum(gpu_free, t)
            end = begin + f.need
            gpu_end = begin + f.need_gpu
        gpu_free = np.maximum(gpu_free, gpu_end)
        worst = np.maximum(worst, end - (f.arrive + f.deadline_ms))
        energy += (1.0 - f.x) * f.energy
    allowed = flight[-1].allowed  # the cap in force now: the newest frame's
    ok = allowed & (worst <= 0)
    if ok.any():
        return int(np.argmin(np.where(ok, energy, np.inf)))
    return int(np.argmin(np.where(allowed, worst, np.inf)))


def all_baselines(board: BoardConfig, sim: Simulator, frames: list[FrameTrace],
                  miss_target: float | None = None) -> dict[str, dict]:
    """Every reference on the same frames; ``oracle_target`` too when the governor's miss target
    is given."""
    out = {name: fn(board, sim, frames).model_dump()
           for name, fn in (("performance", performance), ("ondemand", ondemand), ("oracle", oracle))}
    if miss_target is not None:
        out["oracle_target"] = oracle_target(board, sim, frames, miss_target).model_dump()
    return out


def shared_baselines(board: BoardConfig, apps: list[tuple[Simulator, list[FrameTrace]]],
                     miss_target: float) -> list[dict[str, dict]]:
    """The references for apps sharing one board (frames with ``start_ns``), per app: ``performance``,
    ``oracle``, ``oracle_target`` and ``oracle_target_causal`` (each frame planned with what its
    app's previous frame ran under, ``joint_frames(causal=True)``: the bound for a governor that
    learns from measured frames) replayed together (one GPU queue, one point at a time for
    every frame in flight, ``oracle_joint``); ``ondemand`` and ``oracle_target_per_frame`` frame by
    frame (each frame alone on the board: ``ondemand`` follows each domain's own utilisation, which
    this replay does not model across apps; the per-frame oracle is the bound no governor reaches
    when frames overlap)."""
    qs = [NoiseQuantiles.for_frames(PointGrid(board, sim), frames, miss_target) for sim, frames in apps]
    perf = joint_frames(board, apps, None, at_top=True)
    free = joint_frames(board, apps, None)
    fair = joint_frames(board, apps, miss_target, quantiles=qs)
    causal = joint_frames(board, apps, miss_target, quantiles=qs, causal=True)

    def total(per_frame: list[tuple[float, bool]]) -> dict:
        return PolicyResult(frames=len(per_frame), misses=sum(m for _, m in per_frame),
                            energy_j=round(sum(e for e, _ in per_frame), 4)).model_dump()

    out = []
    for k, (sim, frames) in enumerate(apps):
        out.append({"performance": total(perf[k]), "ondemand": ondemand(board, sim, frames).model_dump(),
                    "oracle": total(free[k]), "oracle_target": total(fair[k]),
                    "oracle_target_causal": total(causal[k]),
                    "oracle_target_per_frame": oracle_target(board, sim, frames, miss_target,
                                                             quantiles=qs[k]).model_dump()})
    return out
