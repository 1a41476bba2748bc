"""How much of the GPU the apps sharing it ask for at each point, and the points that keep up.

Deciding frame by frame sees only the frames in flight at that instant: when 32 apps' work queued
on one GPU happens to be short for a moment, a frame finds a slower, cheaper point that meets its
deadline; the frames that arrive a few milliseconds later cannot meet theirs there and the point
goes back up. Measured with 32 apps at 120 fps on the SD888's GPU (20 ms deadline, every frame
late at every point): a write down and one up every 60-150 ms, each holding the frames asked
meanwhile for the write's round trip. What the instant hides, the apps' rates say: an app that
asks for a frame every ``T`` ms with a deadline ``D`` needs at least ``gpu_ms(p) / max(T, D)`` of
the GPU at point ``p`` (each frame's GPU work within its deadline, at its rate), and a point at
which the apps together need more than the whole GPU cannot serve them for long: their work piles
up there whatever the queue shows now.

So, with two or more apps counted, decisions keep to the points at which the apps' summed share is
at most 1, or, where no point allowed keeps up (an overload), to those of least summed share (the
GPU's fastest work: the queue grows slowest there). One app alone is never held by this: its
frames run one after another, so its rate follows its latency. Pure computation; the governor
calls it under its lock."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EWMA = 0.2  # the weight of the newest interval in an app's period
STALE_PERIODS = 3.0  # an app not heard from for this many of its periods (or deadlines) is gone
STALE_MIN_S = 0.1
EXPIRE_EVERY_S = 0.01  # how often gone apps are looked for (not on every frame)
RESCALE = 0.05  # an app's share is redone when its rate moved by more than this (relative)
KEEP_UP = 1.0  # the whole GPU


@dataclass
class _AppRate:
    last_s: float
    period_s: float | None = None
    scale: float = 0.0  # 1 / max(period, deadline) in 1/ms, as counted in the total
    gpu_ms: np.ndarray | None = None  # the GPU time array counted (the grid's, not a copy)
    counted: np.ndarray | None = None  # gpu_ms * scale, as added to the total


class GpuShare:
    """The apps' summed GPU share per point, kept up to date frame by frame at the cost of a few
    scalar operations (an array operation only when an app's rate or model changes)."""

    def __init__(self, n_points: int) -> None:
        self._apps: dict[str, _AppRate] = {}
        self._total = np.zeros(n_points)
        self._counted = 0  # apps whose share is in the total
        self._next_expire_s = 0.0
        self.version = 0  # changes whenever the total does (caches of what is allowed follow it)
        self._overloaded = (-1, False)  # (version, answer)

    def note(self, app: str, now_s: float, gpu_ms: np.ndarray | None, deadline_ms: float) -> None:
        """An app asked for a frame at ``now_s`` whose GPU time per point is ``gpu_ms``."""
        rate = self._apps.get(app)
        if rate is None:
            self._apps[app] = _AppRate(now_s)
        else:
            gap = now_s - rate.last_s
            rate.last_s = now_s
            if gap > 0.0:
                rate.period_s = gap if rate.period_s is None else rate.period_s + EWMA * (gap - rate.period_s)
            if rate.period_s is not None and gpu_ms is not None:
                scale = 1.0 / max(rate.period_s * 1e3, deadline_ms)
                if gpu_ms is not rate.gpu_ms or abs(scale - rate.scale) > RESCALE * rate.scale:
                    self._count(rate, gpu_ms, scale)
        self.tick(now_s)

    def tick(self, now_s: float) -> None:
        """Let apps not heard from for long enough stop counting (before a decision: the apps that
        went quiet must not hold the next one back)."""
        if now_s >= self._next_expire_s:
            self._expire(now_s)

    def _count(self, rate: _AppRate, gpu_ms: np.ndarray | None, scale: float) -> None:
        if rate.counted is not None:
            self._total -= rate.counted
            self._counted -= 1
        rate.gpu_ms, rate.scale = gpu_ms, scale
        rate.counted = None if gpu_ms is None else gpu_ms * scale
        if rate.counted is not None:
            self._total += rate.counted
            self._counted += 1
        if self._counted == 0:
            self._total[:] = 0.0  # no rounding left behind
        self.version += 1

    def _expire(self, now_s: float) -> None:
        self._next_expire_s = now_s + EXPIRE_EVERY_S
        for app, rate in list(self._apps.items()):
            span = max(STALE_PERIODS * max(rate.period_s or 0.0, 1.0 / rate.scale / 1e3 if rate.scale else 0.0),
                       STALE_MIN_S)
            if now_s - rate.last_s > span:
                if rate.counted is not None:
                    self._count(rate, None, 0.0)
                del self._apps[app]

    def forget(self, app: str) -> None:
        """The app is gone (its client closed): its share no longer counts."""
        rate = self._apps.pop(app, None)
        if rate is not None and rate.counted is not None:
            self._count(rate, None, 0.0)

    def period_ms(self, app: str) -> float | None:
        """The app's period between frames asked for (ms; an average of the last few), or None
        before its second frame."""
        rate = self._apps.get(app)
        return None if rate is None or rate.period_s is None else rate.period_s * 1e3

    def total(self) -> np.ndarray | None:
        """The summed share per point, or None while fewer than two apps are counted."""
        return self._total if self._counted >= 2 else None

    def keeps_up(self, allowed: np.ndarray) -> np.ndarray:
        """Of the points ``allowed``, those that keep up with the apps (all of them while fewer than
        two apps are counted)."""
        total = self.total()
        if total is None:
            return allowed
        up = allowed & (total <= KEEP_UP)
        if up.any():
            return up
        least = float(total[allowed].min()) if allowed.any() else 0.0
        return allowed & (total <= least * (1 + 1e-9) + 1e-12)

    def overloaded(self) -> bool:
        """Whether no point keeps up: two or more apps need more than the whole GPU even at its
        fastest (their frames are late whatever is chosen; the queue only grows slowest at the
        points ``keeps_up`` leaves)."""
        if self._overloaded[0] != self.version:
            total = self.total()
            self._overloaded = (self.version, total is not None and float(total.min()) > KEEP_UP)
        return self._overloaded[1]
