"""Cut each profiled run into the segments the estimator scales one by one.

Per layer, in program order:

* ``host``: host time the layer costs. For a GPU layer it is the time from the end of the previous
  host interval to the end of this launch (framework work + enqueue); for a CPU layer it is the time
  from the moment the host could start (previous host work done *and* device drained) to its end,
  so waiting for the device is never mistaken for host work.
  A launch that began with nothing queued on the device is kept apart (``device_idle``): many
  drivers pay more to submit to an idle device than to a busy one.
* ``dispatch``: for a GPU layer, the delay from the end of its launch to the kernel's start, observed
  only where the device was idle when the launch ended (otherwise the kernel queued behind earlier
  work and the delay is hidden); ``nan`` where unobserved.
* ``exec``: device execution time of a GPU layer.

Plus one ``tail`` per run: from the end of the last layer to ``latency_ns`` (read-back, sync).

Bounded queues: many drivers let the host run only so many kernels ahead of the device; an
enqueue beyond that blocks until a slot frees. If the profile shows launches ending, again and
again, with the same number of kernels unfinished, that number is the queue depth ``Q``; a launch
that had to wait is counted as host work only from the moment its slot freed (the end of the
kernel Q before it), so waiting is never mistaken for host work, and the recursion applies the
same bound at every frequency pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from estimator.profile import Profile


@dataclass(frozen=True)
class Segments:
    """Segment durations in ns: arrays of shape (runs, layers), tail of shape (runs,)."""

    host: np.ndarray
    dispatch: np.ndarray
    exec: np.ndarray
    tail: np.ndarray
    cpu_khz: np.ndarray
    gpu_hz: np.ndarray
    context_len: np.ndarray  # zeros for models without a context
    is_gpu: np.ndarray  # (layers,) bool
    queue_depth: int | None = None  # None: the host was never held back
    device_idle: np.ndarray | None = None  # (runs, layers): nothing was queued when the launch began
    mem_hz: np.ndarray | None = None  # (runs,): the memory level, when the profile varies it

    def freqs(self, domains: list[str]) -> list[np.ndarray]:
        """Each run's frequency per domain, in the order of ``domains``."""
        by_name = {"cpu": self.cpu_khz, "gpu": self.gpu_hz, "mem": self.mem_hz}
        return [by_name[d] for d in domains]


MIN_CEILING_HITS = 0.05  # fraction of launches at the ceiling that shows a bounded queue
BLOCK_TOLERANCE_NS = 5_000  # a launch ending this soon after a slot freed was waiting for it


def queue_depth(profile: Profile) -> int | None:
    """The device queue's depth, if launches were held back by one (see the module docs)."""
    inflight_counts = []
    for run in profile.runs:
        ends: list[int] = []  # device end of each kernel launched since the last drain
        for x in run.layers:
            if x.kind != "gpu":
                ends = []
                continue
            ends.append(x.gpu_end_ns)
            inflight_counts.append(sum(e > x.cpu_end_ns for e in ends[-64:]))
    if not inflight_counts:
        return None
    counts = np.array(inflight_counts)
    ceiling = int(counts.max())
    if ceiling >= 64 or ceiling < 1 or (counts == ceiling).mean() < MIN_CEILING_HITS:
        return None
    return ceiling


def extract_segments(profile: Profile) -> Segments:
    runs = profile.runs
    n_runs, n_layers = len(runs), len(runs[0].layers)
    host = np.zeros((n_runs, n_layers))
    dispatch = np.full((n_runs, n_layers), np.nan)
    exe = np.zeros((n_runs, n_layers))
    tail = np.zeros(n_runs)
    is_gpu = np.array([x.kind == "gpu" for x in runs[0].layers])
    idle = np.zeros((n_runs, n_layers), dtype=bool)
    depth = queue_depth(profile)
    for r, run in enumerate(runs):
        host_free = 0
        device_free = 0
        ends: list[int] = []
        for i, x in enumerate(run.layers):
            if x.kind == "gpu":
                idle[r, i] = device_free <= host_free
                host[r, i] = x.cpu_end_ns - host_free
                if depth is not None and len(ends) >= depth:
                    slot = ends[-depth]
                    if slot > host_free and x.cpu_end_ns <= slot + max(BLOCK_TOLERANCE_NS, 0.1 * host[r, i]):
                        host[r, i] = np.nan  # it ended when a slot freed: its own work is hidden
                ends.append(x.gpu_end_ns)
                if device_free <= x.cpu_end_ns:
                    dispatch[r, i] = max(0, x.gpu_start_ns - x.cpu_end_ns)
                exe[r, i] = x.gpu_end_ns - x.gpu_start_ns
                device_free = max(device_free, x.gpu_end_ns)
            else:
                host[r, i] = x.cpu_end_ns - max(host_free, device_free)
                ends = []
            host_free = x.cpu_end_ns
        tail[r] = run.latency_ns - max(host_free, device_free)
    return Segments(
        host=host,
        dispatch=dispatch,
        exec=exe,
        tail=tail,
        cpu_khz=np.array([run.cpu_khz for run in runs], dtype=float),
        gpu_hz=np.array([run.gpu_hz for run in runs], dtype=float),
        context_len=np.array([run.context_len or 0 for run in runs], dtype=float),
        is_gpu=is_gpu,
        queue_depth=depth,
        device_idle=idle,
        mem_hz=(np.array([run.mem_hz for run in runs], dtype=float)
                if profile.frequencies.mem_hz else None),
    )
