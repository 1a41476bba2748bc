"""What the same workload would have cost under other policies, on the virtual board's truth.

* ``performance``: every domain at its highest frequency (within a thermal cap);
* ``ondemand``: a load-following governor like schedutil: each domain's next frequency is the
  lowest one >= 1.25 x current frequency x utilisation of the last frame period;
* ``oracle``: per frame, the pair with the least energy among those whose true (noise-free)
  latency meets the deadline, under that frame's conditions (context, background load, cap).
  It cannot miss by construction; ``misses_with_noise`` says how often its pick would have been
  late with the noise that frame really had, which a causal governor must leave headroom for.

Frames are replayed with the same noise as the governed run where the policy allows it. Boards
without a GPU work the same way over their one domain: the GPU frequency is None throughout.
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


class PolicyResult(BaseModel):
    frames: int
    misses: int
    energy_j: float
    misses_with_noise: int | None = None


def _tables(board: BoardConfig) -> tuple[list[int], list[int | None]]:
    """The CPU table and the GPU's, or ``[None]`` without a GPU (one 'level' that is no value)."""
    tables = board.domain_tables
    return tables["cpu"], tables.get("gpu", [None])


def _caps(board: BoardConfig, capped: bool) -> tuple[int, int | None]:
    cpus, gpus = _tables(board)
    sim = board.simulation
    if not capped or sim is None:
        return cpus[-1], gpus[-1]
    cap_g = gpus[-1] if board.gpu is None else max(f for f in gpus if f <= (sim.thermal_cap_gpu_hz or gpus[-1]))
    return max(f for f in cpus if f <= (sim.thermal_cap_cpu_khz or cpus[-1])), cap_g


def _replay(sim: Simulator, f: FrameTrace, cpu: int, gpu: int | None):
    return sim.run(cpu, gpu, f.context_len, np.random.default_rng(f.seed),
                   host_slowdown=1.0 + f.background_load)


def performance(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> PolicyResult:
    misses, energy = 0, 0.0
    for f in frames:
        c, g = _caps(board, f.capped)
        r = _replay(sim, f, c, g)
        misses += r.latency_ns[0] / 1e6 > f.deadline_ms
        energy += float(board.frame_energy_j(c, g, r.host_busy_ns, r.gpu_busy_ns, r.latency_ns)[0])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


def ondemand(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> PolicyResult:
    cpus, gpus = _tables(board)
    c, g = cpus[-1], gpus[-1]
    misses, energy = 0, 0.0
    for f in frames:
        cap_c, cap_g = _caps(board, f.capped)
        c, g = min(c, cap_c), (min(g, cap_g) if g is not None else None)
        r = _replay(sim, f, c, g)
        lat_ns = float(r.latency_ns[0])
        misses += lat_ns / 1e6 > f.deadline_ms
        energy += float(board.frame_energy_j(c, g, r.host_busy_ns, r.gpu_busy_ns, r.latency_ns)[0])
        period_ns = max(f.period_ms * 1e6, lat_ns)
        util_c, util_g = r.host_busy_ns[0] / period_ns, r.gpu_busy_ns[0] / period_ns
        c = next((x for x in cpus if x >= 1.25 * c * util_c), cpus[-1])
        if g is not None:
            g = next((x for x in gpus if x >= 1.25 * g * util_g), gpus[-1])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4))


def oracle(board: BoardConfig, sim: Simulator, frames: list[FrameTrace],
           context_step: int = 32) -> PolicyResult:
    cpus, gpus = _tables(board)
    has_gpu = board.gpu is not None
    cg, gg = np.meshgrid(cpus, gpus if has_gpu else [0], indexing="ij")
    cg, gg = cg.ravel().astype(float), gg.ravel().astype(float)
    run_g = gg if has_gpu else None
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def truth(ctx: int | None, load: float) -> tuple[np.ndarray, np.ndarray]:
        key = (ctx, load)
        if key not in cache:
            r = sim.run(cg, run_g, ctx, None, host_slowdown=1.0 + load)
            cache[key] = (r.latency_ns / 1e6,
                          board.frame_energy_j(cg, run_g, r.host_busy_ns, r.gpu_busy_ns, r.latency_ns))
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
        cap_c, cap_g = _caps(board, f.capped)
        allowed = (cg <= cap_c) & ((gg <= cap_g) if has_gpu else True)
        ok = allowed & (lat <= f.deadline_ms)
        i = int(np.argmin(np.where(ok, en, np.inf))) if ok.any() else int(np.argmin(np.where(allowed, lat, np.inf)))
        misses += lat[i] > f.deadline_ms
        # the same frame's noise (measured / true at the pair that ran it) applied to the pick
        ran = int(np.flatnonzero((cg == f.cpu_khz) & ((gg == f.gpu_hz) if has_gpu else True))[0])
        noisy_misses += lat[i] * f.latency_ms / lat[ran] > f.deadline_ms
        energy += float(en[i])
    return PolicyResult(frames=len(frames), misses=int(misses), energy_j=round(energy, 4),
                        misses_with_noise=int(noisy_misses))


def all_baselines(board: BoardConfig, sim: Simulator, frames: list[FrameTrace]) -> dict[str, dict]:
    return {name: fn(board, sim, frames).model_dump()
            for name, fn in (("performance", performance), ("ondemand", ondemand), ("oracle", oracle))}
