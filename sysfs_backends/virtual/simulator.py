"""Ground truth for the virtual board: a mobile SoC running a model, layer by layer.

Deliberately richer than the estimator's model, so that the estimator is tested the way a real
device tests it:

* kernels follow a *soft* roofline: compute time scales with the GPU clock, DRAM time does not
  (except that the GPU's achievable bandwidth sags a little at low clocks, as on real SoCs where
  the L2/interconnect is clocked with the GPU), and the two overlap imperfectly
  (``(c^p + m^p)^(1/p)``), plus a per-kernel setup of fixed cycles and a fixed part;
* small kernels reach a lower fraction of peak (occupancy);
* a launch costs host cycles plus a frequency-independent driver part (ioctl, cache misses);
* a kernel submitted to an idle GPU waits a dispatch delay, and a longer wake-up when the GPU had
  been idle long enough to power-collapse;
* host fallback operators wait for the device to drain, pay a wake-up/sync cost, and follow
  their own host roofline;
* noise: multiplicative jitter per segment and rare large outliers (preemption, interrupts).

A board without a GPU runs every layer on the host, one after the other: each follows the host
roofline (compute scales with the CPU clock, memory traffic does not) plus a fixed per-operator
runtime overhead; there is no device to launch to, drain or wake.

Everything is vectorised over frequency pairs so the noise-free truth over a whole grid is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dvfs_schema.board import BoardConfig, Simulation
from dvfs_schema.workload import ModelSpec, layer_work
from estimator.profile import FORMAT


@dataclass(frozen=True)
class SimResult:
    """Per layer (layers, G) start/end times in ns; NaN where a layer has no such interval."""

    cpu_start: np.ndarray
    cpu_end: np.ndarray
    gpu_start: np.ndarray
    gpu_end: np.ndarray
    latency_ns: np.ndarray
    host_busy_ns: np.ndarray
    gpu_busy_ns: np.ndarray


@dataclass(frozen=True)
class _Compiled:
    on_gpu: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    flops_per_token: np.ndarray
    bytes_per_token: np.ndarray
    launch_weight: np.ndarray
    names: list[str]


def _compile(model: ModelSpec) -> _Compiled:
    layers = model.flat_layers()
    works = [layer_work(x, model.dtype_bytes) for x in layers]
    # launches with more arguments (convolutions, attention) cost the driver a little more
    weight = [1.3 if getattr(x, "op", "") in ("conv", "attention") else 1.0 for x in layers]
    return _Compiled(
        on_gpu=np.array([w.on_gpu for w in works]),
        flops=np.array([w.flops for w in works]),
        bytes=np.array([w.bytes for w in works]),
        flops_per_token=np.array([w.flops_per_token for w in works]),
        bytes_per_token=np.array([w.bytes_per_token for w in works]),
        launch_weight=np.array(weight),
        names=[x.name for x in layers],
    )


class Simulator:
    """One model on one board; ``run`` gives timings at any frequency pairs."""

    def __init__(self, board: BoardConfig, model: ModelSpec) -> None:
        if board.simulation is None:
            raise ValueError(f"board {board.name!r} has no simulation section")
        self.board = board
        self.sim: Simulation = board.simulation
        self.model = model
        self.c = _compile(model)
        self.has_gpu = board.gpu is not None
        self.layer_kinds = ["gpu" if g and self.has_gpu else "cpu" for g in self.c.on_gpu]
        self.gpu_max_hz = float(board.gpu.frequencies_hz[-1]) if self.has_gpu else None

    def _jitter(self, rng: np.random.Generator | None, shape: tuple[int, ...]) -> np.ndarray:
        if rng is None or self.sim.noise_sigma <= 0:
            return np.ones(shape)
        return rng.lognormal(0.0, self.sim.noise_sigma, shape)

    def _outliers(self, rng: np.random.Generator | None, shape: tuple[int, ...]) -> np.ndarray:
        if rng is None or self.sim.outlier_probability <= 0:
            return np.zeros(shape)
        hit = rng.random(shape) < self.sim.outlier_probability
        return hit * rng.exponential(self.sim.outlier_ns, shape)

    def run(
        self,
        cpu_khz: np.ndarray | float,
        gpu_hz: np.ndarray | float | None = None,
        context_len: float | None = None,
        rng: np.random.Generator | None = None,
        host_slowdown: float = 1.0,
    ) -> SimResult:
        """Timings at each (cpu_khz, gpu_hz); ``host_slowdown`` > 1 models other load sharing the
        inference thread's CPU (the host segments stretch, the GPU's do not). ``gpu_hz`` is None
        exactly when the board has no GPU."""
        if (gpu_hz is None) == self.has_gpu:
            raise ValueError(f"board {self.board.name!r} "
                             + ("has a GPU: give gpu_hz" if self.has_gpu else "has no GPU: give no gpu_hz"))
        if not self.has_gpu:
            return self._run_on_host(cpu_khz, context_len, rng, host_slowdown)
        s, c = self.sim, self.c
        cpu = np.atleast_1d(np.asarray(cpu_khz, dtype=float))
        gpu = np.atleast_1d(np.asarray(gpu_hz, dtype=float))
        cpu, gpu = np.broadcast_arrays(cpu, gpu)
        g = cpu.shape[0]
        n = len(c.names)
        ctx = float(context_len or 0)
        ns_per_cpu_cycle = 1e6 / cpu * host_slowdown  # cpu in kHz
        ns_per_gpu_cycle = 1e9 / gpu

        flops = (c.flops + ctx * c.flops_per_token)[:, None]
        nbytes = (c.bytes + ctx * c.bytes_per_token)[:, None]
        occupancy = flops / (flops + 2e5)
        compute = flops / (s.gpu_flops_per_cycle * s.gpu_efficiency * occupancy) * ns_per_gpu_cycle
        bandwidth = s.gpu_dram_gbps * (0.8 + 0.2 * gpu / self.gpu_max_hz)  # GB/s == bytes/ns
        memory = nbytes / bandwidth
        p = s.roofline_sharpness
        exe = (compute**p + memory**p) ** (1 / p)
        exe = exe + s.gpu_kernel_cycles * ns_per_gpu_cycle + s.gpu_kernel_fixed_ns
        launch = c.launch_weight[:, None] * s.launch_cycles * ns_per_cpu_cycle + s.launch_fixed_ns
        host_compute = flops / s.host_ops_per_cycle * ns_per_cpu_cycle
        host_memory = nbytes / s.host_dram_gbps
        host_op = np.sqrt(host_compute**2 + host_memory**2)
        sync = s.sync_cycles * ns_per_cpu_cycle + s.sync_fixed_ns

        exe = exe * self._jitter(rng, (n, g))
        launch = launch * self._jitter(rng, (n, g)) + self._outliers(rng, (n, g))
        host_op = host_op * self._jitter(rng, (n, g)) + self._outliers(rng, (n, g))
        syncs = sync * self._jitter(rng, (n + 1, g))

        cpu_start = np.full((n, g), np.nan)
        cpu_end = np.full((n, g), np.nan)
        gpu_start = np.full((n, g), np.nan)
        gpu_end = np.full((n, g), np.nan)
        clock = np.zeros(g)
        free = np.zeros(g)
        host_busy = np.zeros(g)
        gpu_busy = np.zeros(g)
        ends: list[np.ndarray] = []  # kernels since the last drain (bounded driver queue)
        for i in range(n):
            if c.on_gpu[i]:
                cpu_start[i] = clock
                clock = clock + launch[i]
                if s.queue_depth is not None and len(ends) >= s.queue_depth:
                    clock = np.maximum(clock, ends[-s.queue_depth])  # enqueue blocks for a slot
                cpu_end[i] = clock
                idle_gap = clock + s.dispatch_ns - free
                wake = np.where(idle_gap > s.idle_wake_after_ns, s.idle_wake_ns, 0.0)
                start = np.maximum(clock + s.dispatch_ns + wake, free)
                gpu_start[i] = start
                free = start + exe[i]
                gpu_end[i] = free
                ends.append(free)
                host_busy += launch[i]
                gpu_busy += exe[i]
            else:
                ends = []
                start = np.maximum(clock, free) + syncs[i]
                cpu_start[i] = start
                clock = start + host_op[i]
                cpu_end[i] = clock
                host_busy += syncs[i] + host_op[i]
        readback = self.model.output_bytes / s.host_dram_gbps
        latency = np.maximum(clock, free) + syncs[n] + readback
        host_busy += syncs[n] + readback
        return SimResult(cpu_start, cpu_end, gpu_start, gpu_end, latency, host_busy, gpu_busy)

    def _run_on_host(self, cpu_khz, context_len, rng, host_slowdown) -> SimResult:
        """A board without a GPU: every layer is host work, back to back."""
        s, c = self.sim, self.c
        cpu = np.atleast_1d(np.asarray(cpu_khz, dtype=float))
        g, n = cpu.shape[0], len(c.names)
        ctx = float(context_len or 0)
        ns_per_cpu_cycle = 1e6 / cpu * host_slowdown
        flops = (c.flops + ctx * c.flops_per_token)[:, None]
        nbytes = (c.bytes + ctx * c.bytes_per_token)[:, None]
        compute = flops / s.host_ops_per_cycle * ns_per_cpu_cycle
        memory = np.broadcast_to(nbytes / s.host_dram_gbps, compute.shape)
        p = s.roofline_sharpness
        op = (compute**p + memory**p) ** (1 / p) + s.host_op_fixed_ns
        op = op * self._jitter(rng, (n, g)) + self._outliers(rng, (n, g))
        cpu_end = np.cumsum(op, axis=0)
        cpu_start = cpu_end - op
        readback = self.model.output_bytes / s.host_dram_gbps
        latency = cpu_end[-1] + readback
        empty = np.full((n, g), np.nan)
        return SimResult(cpu_start, cpu_end, empty, empty.copy(), latency, latency.copy(), np.zeros(g))

    def profile(
        self,
        points: list[tuple[int, ...]],
        repeats: int = 3,
        context_lens: list[int] | None = None,
        rng: np.random.Generator | None = None,
        device: str | None = None,
    ) -> dict:
        """A profile in the shared format, as a real device would measure it. ``points`` are
        tuples over the board's domains: (cpu_khz, gpu_hz), or (cpu_khz,) without a GPU."""
        board = self.board
        runs = []
        for ctx in context_lens or [None]:
            for point in points:
                cpu_khz, gpu_hz = point[0], (point[1] if self.has_gpu else None)
                cpus = np.full(repeats, cpu_khz, dtype=float)
                gpus = np.full(repeats, gpu_hz, dtype=float) if self.has_gpu else None
                res = self.run(cpus, gpus, ctx, rng)
                for r in range(repeats):
                    runs.append(self._run_record(res, r, cpu_khz, gpu_hz, ctx))
        return {
            "format": FORMAT,
            "model": self.model.name,
            "device": device or f"virtual:{board.name}",
            "frequencies": {
                "cpu_khz": board.cpu.inference.frequencies_khz,
                "gpu_hz": board.gpu.frequencies_hz if self.has_gpu else [],
            },
            "runs": runs,
        }

    def _run_record(self, res: SimResult, r: int, cpu_khz: int, gpu_hz: int | None, ctx: int | None) -> dict:
        layers = []
        for i, name in enumerate(self.c.names):
            layer = {
                "name": name,
                "kind": self.layer_kinds[i],
                "cpu_start_ns": int(res.cpu_start[i, r]),
                "cpu_end_ns": int(res.cpu_end[i, r]),
            }
            if self.layer_kinds[i] == "gpu":
                layer["gpu_start_ns"] = int(res.gpu_start[i, r])
                layer["gpu_end_ns"] = int(res.gpu_end[i, r])
            layers.append(layer)
        return {
            "cpu_khz": int(cpu_khz),
            "gpu_hz": int(gpu_hz) if gpu_hz is not None else None,
            "context_len": ctx,
            "latency_ns": int(np.ceil(res.latency_ns[r])),
            "layers": layers,
        }
