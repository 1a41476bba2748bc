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

The memory clock (a board with a ``memory`` section) scales the DRAM bandwidth both sides see:
``gpu_dram_gbps`` and ``host_dram_gbps`` are at the highest memory level and fall in proportion to
the memory clock, except a fixed share of each DRAM access (``mem_latency_fraction``: controller and
interconnect latency) that does not scale. Memory-bound kernels and host operators therefore slow
at low memory clocks while compute-bound ones hardly notice; where a kernel sits on the roofline
moves with both clocks.

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
from estimator.profile import build_profile


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
        self.has_mem = board.memory is not None
        self.mem_max_hz = float(board.memory.frequencies_hz[-1]) if self.has_mem else None

    def _dram_time_scale(self, mem_hz, shape_like: np.ndarray) -> np.ndarray:
        """How much longer a DRAM access takes than at the highest memory level, per point: the
        bandwidth part scales with 1 / f_mem, the latency share does not."""
        if mem_hz is None or not self.has_mem:
            return np.ones_like(shape_like)
        ratio = np.broadcast_to(np.asarray(mem_hz, dtype=float), shape_like.shape) / self.mem_max_hz
        share = self.sim.mem_latency_fraction
        return share + (1.0 - share) / ratio

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
        mem_hz: np.ndarray | float | None = None,
    ) -> SimResult:
        """Timings at each (cpu_khz, gpu_hz[, mem_hz]); ``host_slowdown`` > 1 models other load
        sharing the inference thread's CPU (the host segments stretch, the GPU's do not).
        ``gpu_hz`` is None exactly when the board has no GPU; ``mem_hz`` None means the highest
        memory level (and is the only choice on a board without a memory domain)."""
        if (gpu_hz is None) == self.has_gpu:
            raise ValueError(f"board {self.board.name!r} "
                             + ("has a GPU: give gpu_hz" if self.has_gpu else "has no GPU: give no gpu_hz"))
        if mem_hz is not None and not self.has_mem:
            raise ValueError(f"board {self.board.name!r} has no memory domain: give no mem_hz")
        if not self.has_gpu:
            return self._run_on_host(cpu_khz, context_len, rng, host_slowdown, mem_hz)
        s, c = self.sim, self.c
        cpu = np.atleast_1d(np.asarray(cpu_khz, dtype=float))
        gpu = np.atleast_1d(np.asarray(gpu_hz, dtype=float))
        cpu, gpu = np.broadcast_arrays(cpu, gpu)
        if mem_hz is not None:
            cpu, gpu, _ = np.broadcast_arrays(cpu, gpu, np.atleast_1d(np.asarray(mem_hz, dtype=float)))
        dram = self._dram_time_scale(mem_hz, cpu)
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
        memory = nbytes / bandwidth * dram
        p = s.roofline_sharpness
        exe = (compute**p + memory**p) ** (1 / p)
        exe = exe + s.gpu_kernel_cycles * ns_per_gpu_cycle + s.gpu_kernel_fixed_ns
        launch = c.launch_weight[:, None] * s.launch_cycles * ns_per_cpu_cycle + s.launch_fixed_ns
        host_compute = flops / s.host_ops_per_cycle * ns_per_cpu_cycle
        host_memory = nbytes / s.host_dram_gbps * dram
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
        readback = self.model.output_bytes / s.host_dram_gbps * dram
        latency = np.maximum(clock, free) + syncs[n] + readback
        host_busy += syncs[n] + readback
        return SimResult(cpu_start, cpu_end, gpu_start, gpu_end, latency, host_busy, gpu_busy)

    def _run_on_host(self, cpu_khz, context_len, rng, host_slowdown, mem_hz=None) -> SimResult:
        """A board without a GPU: every layer is host work, back to back."""
        s, c = self.sim, self.c
        cpu = np.atleast_1d(np.asarray(cpu_khz, dtype=float))
        if mem_hz is not None:
            cpu, _ = np.broadcast_arrays(cpu, np.atleast_1d(np.asarray(mem_hz, dtype=float)))
        dram = self._dram_time_scale(mem_hz, cpu)
        g, n = cpu.shape[0], len(c.names)
        ctx = float(context_len or 0)
        ns_per_cpu_cycle = 1e6 / cpu * host_slowdown
        flops = (c.flops + ctx * c.flops_per_token)[:, None]
        nbytes = (c.bytes + ctx * c.bytes_per_token)[:, None]
        compute = flops / s.host_ops_per_cycle * ns_per_cpu_cycle
        memory = nbytes / s.host_dram_gbps * dram
        p = s.roofline_sharpness
        op = (compute**p + memory**p) ** (1 / p) + s.host_op_fixed_ns
        op = op * self._jitter(rng, (n, g)) + self._outliers(rng, (n, g))
        cpu_end = np.cumsum(op, axis=0)
        cpu_start = cpu_end - op
        readback = self.model.output_bytes / s.host_dram_gbps * dram
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
        end_to_end: bool = False,
    ) -> dict:
        """A profile in the shared format, as a real device would measure it, built and checked
        through ``estimator.profile.Profile``. ``points`` are tuples over the board's domains in
        their order: (cpu_khz, gpu_hz, mem_hz), (cpu_khz, gpu_hz), (cpu_khz, mem_hz) or (cpu_khz,).
        Points without the memory level (one frequency fewer, on a board with a memory domain)
        profile the other domains with the memory at its highest level, and the profile then has
        no memory axis. ``end_to_end``: only each run's latency (``layers: []``), as a timer
        around a closed runtime's inference call sees it."""
        return self.profile_model(points, repeats, context_lens, rng, device, end_to_end).to_dict()

    def profile_model(self, points, repeats=3, context_lens=None, rng=None, device=None,
                      end_to_end=False):
        """``profile`` as the ``Profile`` object."""
        board = self.board
        names = [d.name for d in board.domains]
        tables = board.domain_tables
        if self.has_mem and points and all(len(p) == len(names) - 1 for p in points):
            names = names[:-1]
            tables.pop("mem")
        runs = []
        for ctx in context_lens or [None]:
            for point in points:
                if len(point) != len(names):
                    raise ValueError(f"a point on board {board.name!r} gives one frequency per domain "
                                     f"{names}, got {point}")
                at = dict(zip(names, point, strict=True))
                gpus = np.full(repeats, at["gpu"], dtype=float) if self.has_gpu else None
                mems = np.full(repeats, at["mem"], dtype=float) if "mem" in at else None
                res = self.run(np.full(repeats, at["cpu"], dtype=float), gpus, ctx, rng, mem_hz=mems)
                for r in range(repeats):
                    runs.append(self._run_record(res, r, at, ctx, end_to_end))
        return build_profile(self.model.name, device or f"virtual:{board.name}", tables, runs)

    def _run_record(self, res: SimResult, r: int, at: dict[str, int], ctx: int | None,
                    end_to_end: bool = False) -> dict:
        layers = []
        for i, name in enumerate([] if end_to_end else self.c.names):
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
        record = {
            "cpu_khz": int(at["cpu"]),
            "gpu_hz": int(at["gpu"]) if "gpu" in at else None,
            "context_len": ctx,
            "latency_ns": int(np.ceil(res.latency_ns[r])),
            "layers": layers,
        }
        if "mem" in at:
            record["mem_hz"] = int(at["mem"])
        return record
