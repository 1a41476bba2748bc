"""End-to-end latency from per-layer segment times: the asynchronous CPU-GPU recursion.

The host launches kernels back to back without waiting; a kernel starts when its launch has
ended (plus its dispatch delay) *and* the device has finished the previous kernel (in-order
queue); a host operator first waits for the device to drain. Evaluated for many frequency pairs
at once: every argument is an array over the grid, so one pass over the layers gives the whole
grid (a 200-layer model over 200 pairs is a few hundred numpy operations on short vectors).

Breakdown, all over the grid:

* ``host_busy``: host work (launches, host operators, tail);
* ``gpu_busy``: device execution;
* ``overlap``: time both are busy at once, the part of the work the pipelining hides;
* ``bubble``: device idle time within the inference (``latency - gpu_busy``), aggregated over
  every gap: launch-bound stretches, dispatch delays and host operators;
* ``host_wait``: host idle waiting for the device (``latency - host_busy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Breakdown:
    latency: np.ndarray
    host_busy: np.ndarray
    gpu_busy: np.ndarray
    overlap: np.ndarray
    bubble: np.ndarray
    host_wait: np.ndarray


def simulate_pipeline(
    is_gpu: np.ndarray,
    host: np.ndarray,
    dispatch: np.ndarray,
    exe: np.ndarray,
    tail: np.ndarray,
    with_overlap: bool = True,
    queue_depth: int | None = None,
    host_idle: np.ndarray | None = None,
    timeline: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] | None = None,
) -> Breakdown:
    """Run the recursion; host/dispatch/exe are (layers, G), tail is (G,), times in any unit.

    ``with_overlap=False`` skips the exact overlap accounting (latency alone is what the
    governor's hot path needs). ``timeline``, if given, receives per layer the predicted
    (host start, host end, device start, device end), device times None for host layers: the
    predicted counterpart of a profiled run, for trace export.
    """
    g = tail.shape[0]
    clock = np.zeros(g)  # host time: when the host finished its last piece of work
    free = np.zeros(g)  # device time: when the device finishes its queued work
    phase_start = np.zeros(g)  # when the host resumed after its last wait
    overlap = np.zeros(g)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # kernel start, end, phase start
    ends: list[np.ndarray] = []  # device end of each kernel since the last drain

    def close_phase(host_stop: np.ndarray) -> None:
        # The host was busy without a break over [phase_start, host_stop]; each kernel of this
        # phase overlaps that interval by the length of the intersection.
        nonlocal overlap
        for start, end, resumed in pending:
            overlap = overlap + np.clip(
                np.minimum(end, host_stop) - np.maximum(start, resumed), 0.0, None
            )
        pending.clear()

    spent = np.zeros(g)  # host work actually done
    for i in range(is_gpu.shape[0]):
        if is_gpu[i]:
            h = host[i] if host_idle is None else np.where(free <= clock, host_idle[i], host[i])
            began = clock
            spent = spent + h
            clock = clock + h
            if queue_depth is not None and len(ends) >= queue_depth:
                clock = np.maximum(clock, ends[-queue_depth])
            start = np.maximum(clock + dispatch[i], free)
            free = start + exe[i]
            if timeline is not None:
                timeline.append((began, clock, start, free))
            if queue_depth is not None:
                ends.append(free)
            if with_overlap:
                pending.append((start, free, phase_start))
        else:
            if with_overlap:
                close_phase(clock)
            clock = np.maximum(clock, free)
            ends = []
            phase_start = clock
            clock = clock + host[i]
            spent = spent + host[i]
            if timeline is not None:
                timeline.append((phase_start, clock, None, None))
    if with_overlap:
        close_phase(clock)
    latency = np.maximum(clock, free) + tail
    host_busy = spent + tail
    gpu_busy = (exe * is_gpu[:, None]).sum(axis=0)
    return Breakdown(
        latency=latency,
        host_busy=host_busy,
        gpu_busy=gpu_busy,
        overlap=overlap,
        bubble=latency - gpu_busy,
        host_wait=latency - host_busy,
    )
