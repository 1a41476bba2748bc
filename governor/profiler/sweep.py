"""The frequency sweep: profile a model at each planned (cpu, gpu) pair and write the profile.

For each pair: apply it through the backend, wait out the transition latency, check that it took
effect, run warm-ups, then the repeats. Ctrl-C (KeyboardInterrupt) stops the sweep; what was
measured is kept, and the caller's `restoring` block puts the settings back.
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
    """A pair to profile. ``cpu_scale``/``gpu_scale`` emulate slower clocks (validation only)."""

    cpu_khz: int
    gpu_hz: int
    cpu_scale: float = 1.0
    gpu_scale: float = 1.0


@dataclass
class SweepResult:
    profile: dict
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def run_record(t: RunTiming, cpu_khz: int, gpu_hz: int, context_len: int | None) -> dict:
    layers = []
    for x in t.layers:
        layer = {"name": x.name, "kind": x.kind, "cpu_start_ns": x.cpu_start_ns, "cpu_end_ns": x.cpu_end_ns}
        if x.kind == "gpu":
            layer["gpu_start_ns"], layer["gpu_end_ns"] = x.gpu_start_ns, x.gpu_end_ns
        layers.append(layer)
    return {"cpu_khz": cpu_khz, "gpu_hz": gpu_hz, "context_len": context_len, "latency_ns": t.latency_ns,
            "layers": layers}


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
) -> SweepResult:
    runs: list[dict] = []
    notes: list[str] = []
    clamped = 0
    uncertainties: list[int] = []
    interrupted = False
    try:
        for point in points:
            if backend is not None:
                res = backend.apply({"cpu": point.cpu_khz, "gpu": point.gpu_hz})
                info = backend.discover().domains
                time.sleep(max(d.transition_latency_ns for d in info.values()) / 1e9)
                if res.effective != res.target:
                    notes.append(f"pair {res.target}: {res.effective} was in force instead; "
                                 "runs recorded at the frequencies really in force")
                cpu_khz, gpu_hz = res.effective.get("cpu", point.cpu_khz), res.effective.get("gpu", point.gpu_hz)
            else:
                cpu_khz, gpu_hz = point.cpu_khz, point.gpu_hz
            for ctx in context_lens or [None]:
                for _ in range(warmup):
                    runner.run(ctx, point.cpu_scale, point.gpu_scale)
                for _ in range(repeats):
                    t = runner.run(ctx, point.cpu_scale, point.gpu_scale)
                    clamped += t.clamped
                    uncertainties.append(runner.offset_uncertainty_ns)
                    runs.append(run_record(t, cpu_khz, gpu_hz, ctx))
                    if progress:
                        progress(1)
    except (KeyboardInterrupt, Stopped):
        interrupted = True
        notes.append(f"interrupted after {len(runs)} runs; the profile holds what was measured")
    profile = {
        "format": FORMAT,
        "model": runner.spec.name,
        "device": device_name,
        "frequencies": {"cpu_khz": sorted(set(cpu_table)), "gpu_hz": sorted(set(gpu_table))},
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
    return SweepResult(profile, interrupted, notes)
