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

    def _truth(self, ctx: int | None, load: float) -> tuple[np.ndarray, np.ndarray]:
        key = (ctx, load)
        if key not in self._cache:
            r, e = self.run(self.c, self.g, self.m, ctx, load)
            self._cache[key] = (r.latency_ns / 1e6, e)
        return self._cache[key]

    def at(self, ctx: int | None, load: float, step: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free latency (ms) and energy (J) at every point for one frame's conditions."""
        if ctx is None:
            return self._truth(None, load)
        lo = ctx // step * step  # latency and energy are linear in the context between grid points
        w = (ctx - lo) / step
        (l0, e0), (l1, e1) = self._truth(lo, load), self._truth(lo + step, load)
        return l0 + w * (l1 - l0), e0 + w * (e1 - e0)


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


def noise_quantile(grid: PointGrid, context_len: int | None, target: float, draws: int = NOISE_DRAWS,
                   seed: int = 12345) -> np.ndarray:
    """Per point, the (1 - ``target``) quantile of latency / noise-free latency over ``draws`` frames
    of the simulator's noise (at ``context_len``, no load): the room a pick must leave to be late no
    more than ``target`` of the time."""
    base, _ = grid.at(context_len, 0.0)
    rng = np.random.default_rng(seed)
    ratios = np.stack([grid.run(grid.c, grid.g, grid.m, context_len, 0.0, rng)[0].latency_ns / 1e6 / base
                       for _ in range(draws)])
    return np.quantile(ratios, 1 - target, axis=0)


def oracle(board: BoardConfig, sim: Simulator, frames: list[FrameTrace],
           context_step: int = 32) -> PolicyResult:
    grid = PointGrid(board, sim)
    misses, noisy_misses, energy = 0, 0, 0.0
    for f in frames:
        lat, en = grid.at(f.context_len, f.background_load, context_step)
        allowed = grid.allowed(f.capped)
        i = pick(allowed & (lat <= f.deadline_ms), allowed, en, lat)
        misses += lat[i] > f.deadline_ms
        # the same frame's noise (measured / true at the point that ran it) applied to the pick
        ran = grid.index(f.cpu_khz, f.gpu_hz, f.mem_hz)
        noisy_misses += lat[i] * f.latency_ms / lat[ran] > f.deadline_ms
        energy += float(en[i])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4),
                        misses_with_noise=int(noisy_misses))


def oracle_target(board: BoardConfig, sim: Simulator, frames: list[FrameTrace], target: float,
                  context_step: int = 32) -> PolicyResult:
    grid = PointGrid(board, sim)
    q = noise_quantile(grid, frames[0].context_len if frames else None, target)
    misses, energy = 0, 0.0
    for f in frames:
        lat, en = grid.at(f.context_len, f.background_load, context_step)
        allowed = grid.allowed(f.capped)
        need = lat * q
        j = pick(allowed & (need <= f.deadline_ms), allowed, en, need)
        ran = grid.index(f.cpu_khz, f.gpu_hz, f.mem_hz)
        misses += lat[j] * f.latency_ms / lat[ran] > f.deadline_ms  # with the noise the frame had
        energy += float(en[j])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


def all_baselines(board: BoardConfig, sim: Simulator, frames: list[FrameTrace],
                  miss_target: float | None = None) -> dict[str, dict]:
    """Every reference on the same frames; ``oracle_target`` too when the governor's miss target
    is given."""
    out = {name: fn(board, sim, frames).model_dump()
           for name, fn in (("performance", performance), ("ondemand", ondemand), ("oracle", oracle))}
    if miss_target is not None:
        out["oracle_target"] = oracle_target(board, sim, frames, miss_target).model_dump()
    return out
