"""Baselines the estimator is measured against (benchmarks report both side by side)."""

from __future__ import annotations

import numpy as np

from estimator.profile import Profile
from estimator.segments import extract_segments


def naive_scaling(profile: Profile, cpu_khz: np.ndarray | float, gpu_hz: np.ndarray | float | None,
                  context_len: float | None = None) -> np.ndarray:
    """Latency measured at the fastest profiled pair x f_max/f of the bound side (the GPU if the
    device was busier than the host there, else the CPU): the textbook t ~ 1/f model. Without a
    GPU (``gpu_hz`` None) the CPU is the only side; the memory clock, where profiled, is ignored
    (measured at its highest level), as this model does."""
    seg = extract_segments(profile)
    has_gpu = gpu_hz is not None
    c_max = seg.cpu_khz.max()
    g_max = seg.gpu_hz.max() if has_gpu else np.nan
    at_max = (seg.cpu_khz == c_max) & ((seg.gpu_hz == g_max) if has_gpu else True)
    if seg.mem_hz is not None:
        at_max &= seg.mem_hz == seg.mem_hz.max()
    if context_len is not None:  # the nearest profiled context
        at_max &= seg.context_len == seg.context_len[np.argmin(np.abs(seg.context_len - context_len))]
    runs = np.flatnonzero(at_max)
    latency = np.median([profile.runs[r].latency_ns for r in runs]) / 1e6
    gpu_busy = np.median(seg.exec[runs].sum(axis=1))
    host_busy = np.median(np.nansum(seg.host[runs], axis=1))
    gpu_bound = has_gpu and gpu_busy >= host_busy
    scale = g_max / np.asarray(gpu_hz, float) if gpu_bound else c_max / np.asarray(cpu_khz, float)
    return latency * scale
