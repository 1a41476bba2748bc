"""A frame that runs over time on the virtual board, beside other apps' frames.

``VirtualKernel.run_frame`` runs a frame wholly at the point in force when it starts. On a board a
frequency change lands while frames run and every frame in flight goes on at the new point, and
the frames of several apps queue on the one GPU. A governor serving several apps must choose one
point for all of their frames at once, so the harness that judges it has to run frames this way:

* **progress**: a frame's work goes at rate 1 / L(p), L(p) its latency at the point p in force
  (noise-free at the frame's context and background load, times the frame's own noise factor,
  drawn once at its start, times any slowdown the caller imposes, e.g. a burst). A change in the
  middle of a frame changes the rate from the moment it landed (the domain's ``changed_ns``);
  while a domain is in its transition latency the frame makes no progress (what ``run_frame``
  adds as a delay);
* **the GPU queue**, kept in the board's state and so shared by every process running frames on
  it: frames take the GPU in the order they started; a frame runs once the GPU work of every frame
  ahead of it is done (from the moment it was done, not when its owner looked), and its own GPU
  work, G(p) at rate 1 / G(p), then holds the queue;
* **energy**: each stretch at one point is that share of the frame at that point under the board's
  energy model (a transition stall costs nothing here); when the frame ends it is charged to the
  board's rails and temperature.

What it leaves out: the board's actuation delay (``actuation_latency_ns``: a new frequency taking
effect milliseconds after the write) is not modelled, as in ``run_frame``; host and GPU work share
one noise factor.

The app polls: ``advance()`` integrates up to now and says how long to wait before looking again.
Between looks the point seen last is taken to have held; a change seen later is placed at its
``changed_ns`` (one change per domain between two looks is resolved exactly, ``POLL_NS`` apart).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

import numpy as np

from sysfs_backends.virtual import power_files
from sysfs_backends.virtual.simulator import Simulator

POLL_NS = 2_000_000  # the longest an app waits between looks at the point in force
STALE_NS = 10_000_000_000  # a queue entry this old belongs to an app that died: dropped
_ids = itertools.count()

Point = tuple[int, int | None, int | None]  # (cpu kHz, gpu Hz or None, memory level or None)


@dataclass(frozen=True)
class RanFrame:
    """A frame as it ran: what the app measured and what the harness's references need."""

    start_ns: int  # CLOCK_MONOTONIC when it was started (common to every process of the board)
    latency_ns: float  # start to end: waiting for the GPU queue, running, transition stalls
    wait_ns: float  # waiting behind frames ahead of it on the GPU
    stall_ns: float  # running time lost to frequency transitions
    energy_j: float
    noise: float  # the frame's own noise factor (its latency / the noise-free latency, any point)
    slowdown: float  # the factor the caller imposed (a burst)
    cpu_khz: int  # the point it started running at
    gpu_hz: int | None
    mem_hz: int | None
    points: tuple[tuple[int, int | None, int | None, float], ...]  # (point..., share of the work)
    background_load: float
    capped: bool


class RunningFrame:
    """One frame in progress (see the module docstring). ``advance()`` until it returns None, then
    ``result``; or ``run_frame_over_time`` for the whole loop."""

    def __init__(self, kernel, sim: Simulator, context_len: int | None = None,
                 rng: np.random.Generator | None = None, slowdown: float = 1.0,
                 period_s: float | None = None) -> None:
        self.kernel = kernel
        self.sim = sim
        self.ctx = context_len
        self.slowdown = float(slowdown)
        self.period_s = period_s
        self.dirs = kernel.frame_domains()
        self.has_gpu = self.dirs[1] is not None
        self.id = f"{os.getpid()}-{next(_ids)}"
        self._profiles: dict[Point, tuple[float, float, float]] = {}
        with kernel._locked() as state:
            now = time.monotonic_ns()
            self.start_ns = now
            self.load = float(state["background_load"])
            self.capped = bool(state["thermal"]["capped"])
            point = self._point(state)
            if rng is not None:
                noisy = self._run(point, rng)
                self.noise = float(noisy.latency_ns[0]) / self._profile(point)[0]
            else:
                self.noise = 1.0
            if self.has_gpu:
                queue = state.setdefault("gpu_queue", [])
                queue[:] = [e for e in queue if now - e[1] < STALE_NS]
                queue.append([self.id, now])
        self.scale = self.noise * self.slowdown
        self._seen = point
        self._t = now  # integrated up to here
        self.run_start_ns: int | None = None if self.has_gpu else now
        self.x = 0.0  # share of the frame's work done
        self.y = 0.0 if self.has_gpu else 1.0  # share of its GPU work done
        self.gpu_end_ns: float | None = None
        self.end_ns: float | None = None
        self.stall_ns = 0.0
        self.shares: dict[Point, float] = {}
        self.result: RanFrame | None = None
        self._queued = self.has_gpu  # still holds an entry in the board's GPU queue

    # ---- the board -------------------------------------------------------------------------
    def _point(self, state: dict) -> Point:
        cpu_dir, gpu_dir, mem_dir = self.dirs
        doms = state["domains"]
        return (doms[cpu_dir]["cur"], doms[gpu_dir]["cur"] if gpu_dir else None,
                doms[mem_dir]["cur"] if mem_dir else None)

    def _run(self, point: Point, rng=None):
        cpu, gpu, mem = point
        return self.sim.run(cpu, gpu, self.ctx, rng, host_slowdown=1.0 + self.load, mem_hz=mem)

    def _profile(self, point: Point) -> tuple[float, float, float]:
        """Noise-free (latency, GPU busy, host busy) in ns at ``point`` for this frame."""
        prof = self._profiles.get(point)
        if prof is None:
            r = self._run(point)
            prof = self._profiles[point] = (float(r.latency_ns[0]), float(r.gpu_busy_ns[0]),
                                            float(r.host_busy_ns[0]))
        return prof

    # ---- integration -------------------------------------------------------------------------
    def _stalls(self, state: dict, a: float, b: float) -> list[tuple[float, float]]:
        """The transition windows of the frame's domains that overlap [a, b), merged."""
        wins = []
        for d in self.dirs:
            if d is not None:
                dom = state["domains"][d]
                lo, hi = dom["changed_ns"], dom["changed_ns"] + dom["latency_ns"]
                if hi > a and lo < b:
                    wins.append((max(lo, a), min(hi, b)))
        wins.sort()
        merged: list[tuple[float, float]] = []
        for lo, hi in wins:
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged

    def _progress(self, point: Point, a: float, b: float) -> None:
        """Run at ``point`` from ``a`` to ``b`` (no stall inside), stopping when the frame ends."""
        if b <= a or self.end_ns is not None:
            return
        lat, gpu, _ = self._profile(point)
        lat_s, gpu_s = lat * self.scale, gpu * self.scale
        dt = b - a
        if self.y < 1.0:
            if gpu_s <= 0 or (1.0 - self.y) * gpu_s <= dt:
                self.gpu_end_ns = a + (1.0 - self.y) * gpu_s
                self.y = 1.0
            else:
                self.y += dt / gpu_s
        need = (1.0 - self.x) * lat_s
        if need <= dt:
            self.shares[point] = self.shares.get(point, 0.0) + (1.0 - self.x)
            self.x = 1.0
            self.end_ns = a + need
        else:
            self.shares[point] = self.shares.get(point, 0.0) + dt / lat_s
            self.x += dt / lat_s

    def _integrate(self, state: dict, now: int) -> None:
        a = max(self._t, self.run_start_ns)
        if now <= a:
            return
        point = self._point(state)
        split = now
        if point != self._seen:  # placed at the latest change of a domain that moved
            moved = [state["domains"][d]["changed_ns"] for d, o, n in zip(self.dirs, self._seen, point, strict=True)
                     if d is not None and o != n]
            split = min(max(max(moved), a), now)
        edges = [(a, split, self._seen), (split, now, point)]
        stalls = self._stalls(state, a, now)
        for lo, hi, p in edges:
            t = lo
            for s_lo, s_hi in stalls:
                if s_hi <= t or s_lo >= hi:
                    continue
                self._progress(p, t, max(t, s_lo))
                if self.end_ns is None:
                    self.stall_ns += min(s_hi, hi) - max(s_lo, t)
                t = max(t, min(s_hi, hi))
            self._progress(p, t, hi)
        self._seen = point

    def advance(self) -> int | None:
        """Integrate up to now; None once the frame has ended, else nanoseconds to wait before the
        next look (the predicted end of its GPU work or of the frame at the point in force, at
        most ``POLL_NS``)."""
        if self.result is not None:
            return None
        state = self.kernel.catch_up()
        now = time.monotonic_ns()
        if self.run_start_ns is None:  # waiting: its turn comes once nothing is ahead of it
            queue = state.get("gpu_queue", [])
            ids = [e[0] for e in queue]
            ahead = ids[: ids.index(self.id)] if self.id in ids else []
            if ahead:
                self._seen = self._point(state)
                self._t = now
                return POLL_NS
            self.run_start_ns = max(self.start_ns, state.get("gpu_free_ns", 0))
            self._t = self.run_start_ns
        self._integrate(state, now)
        self._t = now
        if self._queued and self.gpu_end_ns is not None:
            self._leave_queue(self.gpu_end_ns)
        if self.end_ns is not None:
            self._finish()
            return None
        lat, gpu, _ = self._profile(self._seen)
        left = (1.0 - self.x) * lat * self.scale
        if self.y < 1.0:
            left = min(left, (1.0 - self.y) * gpu * self.scale)
        return int(min(max(left, 50_000), POLL_NS))

    def _drop(self, state: dict) -> None:
        """Take this frame's entry out of the board's GPU queue."""
        queue = state.get("gpu_queue", [])
        queue[:] = [e for e in queue if e[0] != self.id]

    def _leave_queue(self, gpu_end_ns: float) -> None:
        with self.kernel._locked() as state:
            self._drop(state)
            state["gpu_free_ns"] = max(state.get("gpu_free_ns", 0), int(gpu_end_ns))
        self._queued = False

    def _finish(self) -> None:
        board = self.kernel.board
        energy = 0.0
        with self.kernel._locked() as state:
            if self._queued:  # no GPU work (a frame all on the host)
                self._drop(state)
                self._queued = False
            for (cpu, gpu, mem), share in self.shares.items():
                lat, g, h = (v * self.scale * share for v in self._profile((cpu, gpu, mem)))
                energy += float(board.frame_energy_j(cpu, gpu, h, g, lat, mem_hz=mem))
                power_files.account_frame(self.kernel.root, state, board, cpu, gpu, h, g, lat, mem_hz=mem)
            latency = self.end_ns - self.start_ns
            dt = max(self.period_s or 0.0, latency * 1e-9)
            self.kernel._update_thermal(state, energy / dt if dt > 0 else 0.0, dt)
        first = next(iter(self.shares))
        self.result = RanFrame(
            start_ns=self.start_ns, latency_ns=float(latency), wait_ns=float(self.run_start_ns - self.start_ns),
            stall_ns=float(self.stall_ns), energy_j=energy, noise=self.noise, slowdown=self.slowdown,
            cpu_khz=first[0], gpu_hz=first[1], mem_hz=first[2],
            points=tuple((*p, round(s, 6)) for p, s in self.shares.items()),
            background_load=self.load, capped=self.capped)


def run_frame_over_time(kernel, sim: Simulator, context_len: int | None = None,
                        rng: np.random.Generator | None = None, slowdown: float = 1.0,
                        period_s: float | None = None) -> RanFrame:
    """Run one frame to its end in real time (the app is busy for its whole latency, as on a board)."""
    frame = RunningFrame(kernel, sim, context_len, rng, slowdown, period_s)
    while (wait_ns := frame.advance()) is not None:
        time.sleep(wait_ns / 1e9)
    return frame.result
