"""The governor's decision as a search on a precomputed Pareto frontier.

A decision picks, among the grid points allowed (reachable, under the caps, not under a frame in
flight), the one of least energy whose corrected latency (plus the transition latency of the
domains it changes) meets the deadline, keeping the point in force when it costs at most
``hysteresis`` more. Done with numpy over the whole grid that is ~30 us per frame; but what it
depends on changes rarely: the grid (model, context bucket), the correction's host level, and the
mask (caps, floor, unreachable points). So per (grid, level, mask) we keep the Pareto frontier of
(latency, energy): the allowed points sorted by latency, each kept only if it is cheaper than
every faster one. The correction's remaining factor scales every latency alike, so it does not
change the frontier: the cheapest point meeting a deadline is the last frontier entry under
``deadline / factor``, found by bisection.

Exactness matters more than elegance here: ``Frontier.choose`` returns the very index the brute
force (``choose_brute``, the governor's historical code) returns, ties included (least energy,
then lowest index), because tests and run records compare the two. Transition costs depend on the
point in force, so they are handled by checking candidates rather than baked into the frontier.

Pure Python and numpy, no I/O, no locks: the caller (core.Governor) holds its own lock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

import numpy as np


class GridGeometry:
    """The grid's points as Python tuples, their indices, and the lines through each point
    (the points that differ from it in one domain only), computed once per governor."""

    def __init__(self, points: np.ndarray) -> None:
        self.values: list[tuple[int, ...]] = [tuple(int(v) for v in row) for row in points]
        self.index_of: dict[tuple[int, ...], int] = {}
        for i, v in enumerate(self.values):
            self.index_of.setdefault(v, i)
        self.n_domains = int(points.shape[1]) if points.ndim == 2 else 1
        # lines[(d, the point's values with domain d blanked)] -> indices, ascending
        self.lines: dict[tuple, list[int]] = {}
        for i, v in enumerate(self.values):
            for d in range(self.n_domains):
                self.lines.setdefault((d, v[:d] + v[d + 1:]), []).append(i)

    def line(self, d: int, values: tuple[int, ...]) -> list[int]:
        """Indices of the points equal to ``values`` in every domain but ``d`` (may be empty)."""
        return self.lines.get((d, values[:d] + values[d + 1:]), [])


def transition_cost(values: tuple[int, ...], cur: tuple[int, ...], costs_ms: tuple[float, ...]) -> float:
    """The transition latency paid to go from ``cur`` to ``values``: the slowest domain changed."""
    cost = 0.0
    for v, c, t in zip(values, cur, costs_ms, strict=True):
        if v != c and t > cost:
            cost = t
    return cost


class Frontier:
    """The Pareto frontier of one latency/energy vector under one mask of allowed points.

    ``lat_ms``: uncorrected latency per grid point (the correction's factor multiplies it);
    ``energy_mj``: what is minimised; ``allowed``: boolean mask, not all False."""

    __slots__ = ("geometry", "allowed", "lat", "energy", "f_lat", "f_energy", "f_index", "s_lat", "s_index")

    def __init__(self, geometry: GridGeometry, lat_ms: np.ndarray, energy_mj: np.ndarray,
                 allowed: np.ndarray) -> None:
        self.geometry = geometry
        self.allowed: list[bool] = allowed.tolist()
        self.lat: list[float] = lat_ms.tolist()
        self.energy: list[float] = energy_mj.tolist()
        idx = np.flatnonzero(allowed)
        order = idx[np.lexsort((idx, lat_ms[idx]))]  # by latency, then index
        self.s_index: list[int] = order.tolist()
        self.s_lat: list[float] = lat_ms[order].tolist()
        f_lat, f_energy, f_index = [], [], []
        best_e, best_i = np.inf, -1
        energy = self.energy
        for i, lat in zip(self.s_index, self.s_lat, strict=True):
            e = energy[i]
            # a new entry when strictly cheaper than every faster point, or as cheap with a lower
            # index (the brute force's tie-break: among least-energy points, the first)
            if e < best_e or (e == best_e and i < best_i):
                best_e, best_i = e, i
                f_lat.append(lat)
                f_energy.append(e)
                f_index.append(i)
        self.f_lat, self.f_energy, self.f_index = f_lat, f_energy, f_index

    def __len__(self) -> int:
        return len(self.f_index)

    def _last(self, corr: float, deadline_ms: float, cost_ms: float) -> int:
        """Position of the last frontier entry with ``lat * corr + cost_ms <= deadline_ms`` (-1 if
        none). Bisection on a threshold, then the exact test on the neighbours, so that float
        rounding of the division can never move the answer off the brute force's."""
        f_lat = self.f_lat
        k = bisect_right(f_lat, (deadline_ms - cost_ms) / corr if corr > 0 else math.inf)
        n = len(f_lat)
        while k > 0 and f_lat[k - 1] * corr + cost_ms > deadline_ms:
            k -= 1
        while k < n and f_lat[k] * corr + cost_ms <= deadline_ms:
            k += 1
        return k - 1

    def _best_exact(self, corr: float, deadline_ms: float, cur: tuple[int, ...],
                    costs_ms: tuple[float, ...]) -> int:
        """The least-energy (then lowest-index) point meeting the deadline with its own transition
        cost, or -1. Its set is covered by: every point at the largest cost (the frontier), the
        points changing one domain only (the lines through ``cur``, at that domain's cost) and
        ``cur`` itself (no cost). Exact for one and two domains; more fall back to a scan."""
        geo, allowed, lat, energy = self.geometry, self.allowed, self.lat, self.energy
        best_e, best_i = np.inf, -1
        if geo.n_domains > 2:  # not on any board we know: every point at its own cost
            values = geo.values
            for i in range(len(lat)):
                if allowed[i] and lat[i] * corr + transition_cost(values[i], cur, costs_ms) <= deadline_ms:
                    if energy[i] < best_e or (energy[i] == best_e and i < best_i):
                        best_e, best_i = energy[i], i
            return best_i
        k = self._last(corr, deadline_ms, max((0.0, *costs_ms)))
        if k >= 0:
            best_e, best_i = self.f_energy[k], self.f_index[k]
        own = geo.index_of.get(cur)  # cur itself, when it lies on the grid: no cost
        for d in range(geo.n_domains):
            # the points differing from cur in domain d only (or not at all: own)
            changed = costs_ms[d] if costs_ms[d] > 0.0 else 0.0
            for i in geo.line(d, cur):
                e = energy[i]
                if e > best_e or (e == best_e and i >= best_i) or not allowed[i]:
                    continue
                if lat[i] * corr + (0.0 if i == own else changed) <= deadline_ms:
                    best_e, best_i = e, i
        return best_i

    def least_energy_meeting(self, bound_ms: Callable[[float], float], deadline_ms: float) -> float:
        """The least energy of the allowed points whose ``bound_ms(latency)`` meets the deadline
        (inf if none), for any ``bound_ms`` non-decreasing in the uncorrected latency.

        For prediction models richer than a factor and a transition cost (an actuation delay
        blending the old and the new point, a wait behind other apps' GPU work, a mask of points
        that serve the frames in flight), this still decides the common frame exactly: if
        ``bound_ms`` is a lower bound of the full prediction at every point (e.g. the least of the
        per-changed-domain predictions, without the queueing wait), every point meeting the
        deadline is among those counted here, so the point in force is the decision whenever it
        meets the deadline itself (computed exactly, for that one point) and costs at most
        ``(1 + hysteresis)`` x this. Only otherwise is the whole grid needed."""
        k = bisect_right(self.f_lat, deadline_ms, key=bound_ms) - 1
        return self.f_energy[k] if k >= 0 else math.inf

    def fastest(self, corr: float) -> int:
        """The allowed point of least corrected latency (lowest index among equals)."""
        s_lat, s_index = self.s_lat, self.s_index
        least = s_lat[0] * corr
        best = s_index[0]
        for j in range(1, len(s_lat)):
            if s_lat[j] * corr != least:
                break
            best = min(best, s_index[j])
        return best

    def choose(self, corr: float, deadline_ms: float, cur_index: int, cur: tuple[int, ...],
               costs_ms: tuple[float, ...], hysteresis: float) -> tuple[int, bool]:
        """(index, feasible), exactly as ``choose_brute``. ``cur_index``: the grid index of the
        point in force (``cur``, its frequencies, which may lie off the grid); ``costs_ms``: the
        transition latency per domain."""
        # no transition cost: a superset of the feasible (``_last`` at cost 0, inlined: the hot path)
        f_lat = self.f_lat
        k = bisect_right(f_lat, deadline_ms / corr if corr > 0 else math.inf)
        while k > 0 and f_lat[k - 1] * corr > deadline_ms:
            k -= 1
        n = len(f_lat)
        while k < n and f_lat[k] * corr <= deadline_ms:
            k += 1
        k -= 1
        if k < 0:
            return self.fastest(corr), False
        lat, energy, values = self.lat, self.energy, self.geometry.values
        keep = (1 + hysteresis)
        at = values[cur_index]
        cur_ok = (self.allowed[cur_index] and lat[cur_index] * corr
                  + (0.0 if at == cur else transition_cost(at, cur, costs_ms)) <= deadline_ms)
        e0 = self.f_energy[k]
        # the relaxed optimum costs no more than the true one: within hysteresis of it, cur stays
        if cur_ok and energy[cur_index] <= e0 * keep:
            return cur_index, True
        best = self.f_index[k]
        if lat[best] * corr + transition_cost(values[best], cur, costs_ms) > deadline_ms:
            best = self._best_exact(corr, deadline_ms, cur, costs_ms)
            if best < 0:
                return self.fastest(corr), False
        if cur_ok and energy[cur_index] <= energy[best] * keep:
            return cur_index, True
        return best, True


def choose_brute(points: np.ndarray, lat_ms: np.ndarray, energy_mj: np.ndarray, allowed: np.ndarray,
                 corr: float, deadline_ms: float, cur_index: int, cur: tuple[int, ...],
                 costs_ms: tuple[float, ...], hysteresis: float) -> tuple[int, bool]:
    """The reference: numpy over every point, as the governor decided before the frontier."""
    pred = lat_ms * corr
    allowed = allowed.copy()
    if not allowed.any():
        allowed[:] = True
    changes = np.max(np.where(points != np.array(cur), np.array(costs_ms), 0.0), axis=1)
    ok = allowed & (pred + changes <= deadline_ms)
    if not ok.any():
        return int(np.argmin(np.where(allowed, pred, np.inf))), False
    best = int(np.argmin(np.where(ok, energy_mj, np.inf)))
    if ok[cur_index] and energy_mj[cur_index] <= energy_mj[best] * (1 + hysteresis):
        return cur_index, True
    return best, True


class Staircase:
    """The least energy of a set of points as a function of a latency limit: the points sorted by
    latency, with the running minimum of their energy, kept only where it drops. Small (the
    frontier's entries only), so that many can be cached; no per-point lists as ``Frontier`` keeps.

    The governor's shortcut for the common frame (core.Governor._keep_in_force) asks each group of
    points (those changing a given domain, whose actuation delay bounds their prediction from
    below) for its least energy under a latency limit."""

    __slots__ = ("f_lat", "f_energy")

    def __init__(self, lat_sorted: np.ndarray, energy_sorted: np.ndarray, members: np.ndarray) -> None:
        """``lat_sorted``/``energy_sorted``: points in order of latency; ``members``: which count."""
        lat, energy = lat_sorted[members], energy_sorted[members]
        least = np.minimum.accumulate(energy) if len(energy) else energy
        drops = np.ones(len(least), dtype=bool)
        drops[1:] = least[1:] < least[:-1]
        self.f_lat: list[float] = lat[drops].tolist()
        self.f_energy: list[float] = least[drops].tolist()

    def __len__(self) -> int:
        return len(self.f_lat)

    def least_energy(self, lat_limit_ms: float) -> float:
        """The least energy among the points whose latency is at most ``lat_limit_ms`` (inf if none)."""
        k = bisect_right(self.f_lat, lat_limit_ms) - 1
        return self.f_energy[k] if k >= 0 else math.inf


class SortedPoints:
    """The allowed points of one latency/energy vector in order of latency, for building the
    staircases of any grouping of them cheaply (no sort per grouping); the groupings made for each
    point in force are kept here too (a few)."""

    __slots__ = ("index", "lat", "energy", "points", "allowed", "by_cur")

    def __init__(self, points: np.ndarray, lat_ms: np.ndarray, energy_mj: np.ndarray,
                 allowed: np.ndarray) -> None:
        idx = np.flatnonzero(allowed)
        order = idx[np.lexsort((idx, lat_ms[idx]))]
        self.index, self.lat, self.energy = order, lat_ms[order], energy_mj[order]
        self.points = points[order]
        self.allowed: list[bool] = allowed.tolist()
        self.by_cur: dict = {}
