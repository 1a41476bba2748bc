"""The frequency sweep: profile a model at each planned (cpu, gpu[, mem]) point and write the profile.

For each point: apply it through the backend, wait out the transition latency, check that it took
effect, run warm-ups, then the repeats. Ctrl-C (KeyboardInterrupt) stops the sweep; what was
measured is kept, and the caller's `restoring` block puts the settings back.

With a memory domain (``mem_table``) every run records ``mem_hz`` and the profile's frequencies
carry ``mem_hz`` (the format's memory extension). ``end_to_end`` times only the whole inference:
runs with ``layers: []`` and ``latency_ns``, as a runtime that cannot be traced gives them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from estimator.profile import FORMAT
from governor.profiler.runner import ModelRunner, RunTiming
from sysfs_backends.base import Backend
from sysfs_backends.lifecycle import Stopped


@dataclass
class Point:
    """A point to profile (``mem_hz`` only on a board with a memory domain). The ``*_scale``
    fields emulate slower clocks (validation on hardware whose clocks may not be touched)."""

    cpu_khz: int
    gpu_hz: int
    cpu_scale: float = 1.0
    gpu_scale: float = 1.0
    mem_hz: int | None = None
    mem_scale: float = 1.0


@dataclass
class SweepResult:
    profile: dict
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def run_record(t: RunTiming, cpu_khz: int, gpu_hz: int, context_len: int | None, mem_hz: int | None = None) -> dict:
    """One run in the profile format; ``mem_hz`` is written only when the board has a memory
    domain, and an end-to-end timing (no layers) gives ``layers: []``."""
    layers = []
    for x in t.layers:
        layer = {"name": x.name, "kind": x.kind, "cpu_start_ns": x.cpu_start_ns, "cpu_end_ns": x.cpu_end_ns}
        if x.kind == "gpu":
            layer["gpu_start_ns"], layer["gpu_end_ns"] = x.gpu_start_ns, x.gpu_end_ns
        layers.append(layer)
    record = {"cpu_khz": cpu_khz, "gpu_hz": gpu_hz}
    if mem_hz is not None:
        record["mem_hz"] = mem_hz
    return {**record, "context_len": context_len, "latency_ns": t.latency_ns, "layers": layers}


def sweep(
    runner: ModelRunner,
    points: list[Point],
    cpu_table: list[int],
    gpu_table: list[int],
    device_name: str,
    repeats: int = 3,
    warmup: int = 2,
    context_lens: list[int] | None = None,
    backend: Backend | None = None,
    progress: Callable[[int], None] | None = None,
    mem_table: list[int] | None = None,
    end_to_end: bool = False,
) -> SweepResult:
    if mem_table and any(p.mem_hz is None for p in points):
        raise ValueError("with a memory table every point needs its mem_hz")
    if not mem_table and any(p.mem_hz is not None for p in points):
        raise ValueError("a point gives mem_hz but there is no memory table (mem_levels_hz)")
    runs: list[dict] = []
    notes: list[str] = []
    clamped = 0
    uncertainties: list[int] = []
    interrupted = False
    try:
        for point in points:
            mem_hz = point.mem_hz
            if backend is not None:
                targets = {"cpu": point.cpu_khz, "gpu": point.gpu_hz}
                if point.mem_hz is not None:
                    targets["mem"] = point.mem_hz
                res = backend.apply({d: v for d, v in targets.items() if v is not None})
                if point.mem_hz is not None:
                    mem_hz = res.effective.get("mem", point.mem_hz)
                info = backend.discover().domains
                time.sleep(max(d.transition_latency_ns for d in info.values()) / 1e9)
                if res.effective != res.target:
                    notes.append(f"pair {res.target}: {res.effective} was in force instead; "
                                 "runs recorded at the frequencies really in force")
                cpu_khz, gpu_hz = res.effective.get("cpu", point.cpu_khz), res.effective.get("gpu", point.gpu_hz)
            else:
                cpu_khz, gpu_hz = point.cpu_khz, point.gpu_hz
            for ctx in context_lens or [None]:
                scales = {"cpu_scale": point.cpu_scale, "gpu_scale": point.gpu_scale,
                          "mem_scale": point.mem_scale, "per_layer": not end_to_end}
                for _ in range(warmup):
                    runner.run(ctx, **scales)
                for _ in range(repeats):
                    t = runner.run(ctx, **scales)
                    clamped += t.clamped
                    uncertainties.append(runner.offset_uncertainty_ns)
                    runs.append(run_record(t, cpu_khz, gpu_hz, ctx, mem_hz))
                    if progress:
                        progress(1)
    except (KeyboardInterrupt, Stopped):
        interrupted = True
        notes.append(f"interrupted after {len(runs)} runs; the profile holds what was measured")
    frequencies = {"cpu_khz": sorted(set(cpu_table)), "gpu_hz": sorted(set(gpu_table))}
    if mem_table:
        frequencies["mem_hz"] = sorted(set(mem_table))
    profile = {
        "format": FORMAT,
        "model": runner.spec.name,
        "device": device_name,
        "frequencies": frequencies,
        "runs": runs,
        "clock_alignment": {
            "method": "before each run, marker kernels on an idle queue: the device-host offset is "
                      "bounded by host readings taken around each marker",
            "uncertainty_ns": int(np.median(uncertainties)) if uncertainties else runner.offset_uncertainty_ns,
            "uncertainty_ns_max": int(max(uncertainties)) if uncertainties else runner.offset_uncertainty_ns,
            "clamped_intervals": clamped,
        },
        "opencl_device": runner.device.name.strip(),
        "precision": "fp32 kernels with the model's shapes",
    }
    if end_to_end:  # no device intervals were put on the host clock
        del profile["clock_alignment"]
        profile["timing"] = "end to end: the host clock from the inference call until its result is on the host"
    return SweepResult(profile, interrupted, notes)
