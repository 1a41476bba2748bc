"""What the same workload would have cost under other policies, on the virtual board's truth.

* ``performance``: every domain at its highest frequency (within a thermal cap);
* ``ondemand``: a load-following governor like schedutil: each domain's next frequency is the
  lowest one >= 1.25 x current frequency x utilisation of the last frame period;
* ``oracle``: per frame, the point (every domain the board has, memory included) with the least
  energy among those whose true (noise-free) latency meets the deadline, under that frame's
  conditions (context, background load, cap).
  It cannot miss by construction; ``misses_with_noise`` says how often its pick would have been
  late with the noise that frame really had, which a causal governor must leave headroom for.

Frames are replayed with the same noise as the governed run where the policy allows it. Boards
without a GPU or a memory domain work the same way over the domains they have.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from dvfs_schema.board import BoardConfig
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


class _Domains:
    """The board's domains as the replays need them: tables, thermal caps, and the grid of every
    point. A board without a GPU or memory domain has the one 'level' None there."""

    def __init__(self, board: BoardConfig) -> None:
        tables = board.domain_tables
        self.board = board
        self.cpu = tables["cpu"]
        self.gpu = tables.get("gpu", [None])
        self.mem = tables.get("mem", [None])
        grids = np.meshgrid(self.cpu, [0 if g is None else g for g in self.gpu],
                            [0 if m is None else m for m in self.mem], indexing="ij")
        self.c, self.g, self.m = (a.ravel().astype(float) for a in grids)
        self.has_gpu, self.has_mem = board.gpu is not None, "mem" in tables

    def caps(self, capped: bool) -> tuple[int, int | None, int | None]:
        """The highest level of each domain a thermal cap allows (the tops when uncapped)."""
        sim = self.board.simulation
        if not capped or sim is None:
            return self.cpu[-1], self.gpu[-1], self.mem[-1]

        def under(table, cap):
            return table[-1] if table[-1] is None or cap is None else max(f for f in table if f <= cap)

        return (under(self.cpu, sim.thermal_cap_cpu_khz), under(self.gpu, sim.thermal_cap_gpu_hz),
                under(self.mem, sim.thermal_cap_mem_hz))

    def run(self, sim: Simulator, f: FrameTrace, cpu, gpu, mem, rng=None):
        r = sim.run(cpu, gpu if self.has_gpu else None, f.context_len, rng, host_slowdown=1.0 + f.background_load,
                    mem_hz=mem if self.has_mem else None)
        energy = self.board.frame_energy_j(cpu, gpu if self.has_gpu else None, r.host_busy_ns, r.gpu_busy_ns,
                                           r.latency_ns, mem_hz=mem if self.has_mem else None)
        return r, energy


def performance(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> PolicyResult:
    doms = _Domains(board)
    misses, energy = 0, 0.0
    for f in frames:
        c, g, m = doms.caps(f.capped)
        r, e = doms.run(sim, f, c, g, m, np.random.default_rng(f.seed))
        misses += r.latency_ns[0] / 1e6 > f.deadline_ms
        energy += float(e[0])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


def ondemand(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> PolicyResult:
    """Each domain follows its own utilisation; the memory level follows the busier side's (a
    bandwidth monitor sees the traffic of whichever side is working)."""
    doms = _Domains(board)
    c, g, m = doms.cpu[-1], doms.gpu[-1], doms.mem[-1]
    misses, energy = 0, 0.0

    def follow(table, now, util):
        return now if now is None else next((x for x in table if x >= 1.25 * now * util), table[-1])

    for f in frames:
        cap_c, cap_g, cap_m = doms.caps(f.capped)
        c = min(c, cap_c)
        g = min(g, cap_g) if g is not None else None
        m = min(m, cap_m) if m is not None else None
        r, e = doms.run(sim, f, c, g, m, np.random.default_rng(f.seed))
        lat_ns = float(r.latency_ns[0])
        misses += lat_ns / 1e6 > f.deadline_ms
        energy += float(e[0])
        period_ns = max(f.period_ms * 1e6, lat_ns)
        util_c, util_g = r.host_busy_ns[0] / period_ns, r.gpu_busy_ns[0] / period_ns
        c, g, m = follow(doms.cpu, c, util_c), follow(doms.gpu, g, util_g), follow(doms.mem, m, max(util_c, util_g))
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


def oracle(board: BoardConfig, sim: Simulator, frames: list[FrameTrace],
           context_step: int = 32) -> PolicyResult:
    doms = _Domains(board)
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def truth(ctx: int | None, load: float) -> tuple[np.ndarray, np.ndarray]:
        key = (ctx, load)
        if key not in cache:
            probe = FrameTrace(t_s=0, deadline_ms=1, period_ms=1, context_len=ctx, background_load=load,
                               capped=False, seed=0, cpu_khz=0, gpu_hz=None, latency_ms=0, energy_j=0)
            r, e = doms.run(sim, probe, doms.c, doms.g, doms.m)
            cache[key] = (r.latency_ns / 1e6, e)
        return cache[key]

    misses, noisy_misses, energy = 0, 0, 0.0
    for f in frames:
        if f.context_len is None:
            lat, en = truth(None, f.background_load)
        else:  # latency and energy are linear in the context between grid points of `step`
            lo = f.context_len // context_step * context_step
            w = (f.context_len - lo) / context_step
            (l0, e0), (l1, e1) = truth(lo, f.background_load), truth(lo + context_step, f.background_load)
            lat, en = l0 + w * (l1 - l0), e0 + w * (e1 - e0)
        cap_c, cap_g, cap_m = doms.caps(f.capped)
        allowed = ((doms.c <= cap_c) & ((doms.g <= cap_g) if doms.has_gpu else True)
                   & ((doms.m <= cap_m) if doms.has_mem else True))
        ok = allowed & (lat <= f.deadline_ms)
        i = int(np.argmin(np.where(ok, en, np.inf))) if ok.any() else int(np.argmin(np.where(allowed, lat, np.inf)))
        misses += lat[i] > f.deadline_ms
        # the same frame's noise (measured / true at the point that ran it) applied to the pick
        ran = ((doms.c == f.cpu_khz) & ((doms.g == f.gpu_hz) if doms.has_gpu else True)
               & ((doms.m == (f.mem_hz if f.mem_hz is not None else doms.mem[-1])) if doms.has_mem else True))
        noisy_misses += lat[i] * f.latency_ms / lat[int(np.flatnonzero(ran)[0])] > f.deadline_ms
        energy += float(en[i])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4),
                        misses_with_noise=int(noisy_misses))


def all_baselines(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> dict[str, dict]:
    return {name: fn(board, sim, frames).model_dump()
            for name, fn in (("performance", performance), ("ondemand", ondemand), ("oracle", oracle))}
