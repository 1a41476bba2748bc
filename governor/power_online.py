"""Online power learning: the governor corrects the energy model it minimises from the board's rail.

A board config's power tables are a starting point, not the truth (governor/power_learning.py fits
them offline). While the governor runs, every interval between two samples of the board's rail
(``measured_power.PowerTracker``, every ``state_refresh_s``) is one equation:

    measured_j = sum over terms t of  s_t * E_t  +  offset_mw * wall_time

where ``E_t`` is the energy model's term (``EnergyModel.frame_energy_parts_j``: ``idle`` and one per
domain) summed over the frames finished in the interval, each at the point it ran. A term drawn for
the whole frame (idle, memory) is stretched by that frame's measured/predicted latency; a busy-time
term (CPU, GPU) by the interval's median of those ratios, because a single long frame is more often
a stall (a clock change still taking effect, a preempted thread) than more work. ``s_t`` is the
unknown per-term scale and ``offset_mw`` the power the rail sees that no frame causes (a rail
covering the whole board also feeds the display, radios, other processes, and keeps drawing between
frames). The offset is fitted as an intercept so that it is not blamed on a domain, and it is never
put in the grid: no choice of frequencies changes it.

The fit (bounded linear least squares on relative errors, with a prior pulling each scale to 1 and
the offset to 0 worth only ``PRIOR_INTERVALS`` of an interval: a tie-breaker for directions the
data cannot see, which the gate below refuses anyway) runs every ``REFIT_EVERY`` intervals
over the last ``MAX_INTERVALS``: a 5-column problem of a few hundred rows, ~1 ms, on the I/O
thread, never on a frame's path. Its scales are applied only once they are identifiable:

* at least ``MIN_INTERVALS`` intervals with frames and ``MIN_POINTS`` distinct points run (frames
  at one point all have the same term ratios and cannot tell the domains apart);
* the terms' columns (relative, normalised) have a condition number under ``MAX_CONDITION``;
* the fit explains the rail better than the tables do and leaves a relative RMS error under
  ``MAX_RESIDUAL`` (otherwise something the model does not describe is drawing power).

Scales stay within ``bounds`` (default 0.5x..2x of the config's tables): a rail misread or another
load cannot make the governor believe a domain is free or ten times dearer.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

REFIT_EVERY = 4  # intervals between fits
MAX_INTERVALS = 256  # intervals kept (at 0.5 s each, about two minutes)
MAX_FRAMES_PER_INTERVAL = 10_000  # beyond this an interval is dropped rather than grown
MIN_INTERVALS = 16
MAX_SCALE_SE = 0.05  # a term's scale is learned once its standard error is below this
MIN_POINTS = 3
MAX_CONDITION = 1e3
MAX_RESIDUAL = 0.10
PRIOR_INTERVALS = 0.01


def _standard_errors(Xr: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Each coefficient's standard error from the residuals (inf where the data cannot tell)."""
    n, k = Xr.shape
    if n <= k:
        return np.full(k, np.inf)
    sigma2 = float(np.sum((Xr @ coef - 1) ** 2)) / (n - k)
    try:
        cov = np.linalg.inv(Xr.T @ Xr) * sigma2
    except np.linalg.LinAlgError:
        return np.full(k, np.inf)
    return np.sqrt(np.maximum(np.diag(cov), 0.0))


class PowerLearner:
    """Collects (frames' energy terms, measured energy) per interval and fits per-term scales.

    ``terms``: the names of the energy model's terms in the order of the grids' ``energy_parts``
    (``idle`` first, then the domains). Thread-safe: frames arrive from the governor's bookkeeping,
    intervals from its I/O thread."""

    def __init__(self, terms: list[str], bounds: tuple[float, float] = (0.5, 2.0),
                 frame_terms: tuple[str, ...] = ("idle", "mem")) -> None:
        self.terms = list(terms)
        self._whole_frame = np.array([t in frame_terms for t in self.terms])
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.scales = np.ones(len(self.terms))  # applied to the grids
        self.offset_mw = 0.0
        self._lock = threading.Lock()
        self._pending: list[tuple[np.ndarray, int, float, tuple]] = []
        self._tainted = False  # a frame of the interval has no measured latency (failed)
        self._rows: deque[tuple[np.ndarray, float, frozenset]] = deque(maxlen=MAX_INTERVALS)
        self._since_fit = 0
        self.fitted: dict | None = None  # the latest fit's figures, applied or not
        self.applied_fits = 0
        self.note = "collecting: no interval with frames measured yet"

    # ---- collection (cheap: called per frame) ----------------------------------------------------
    def frame(self, parts: np.ndarray, level: int, ratio: float, point: tuple) -> None:
        """A finished frame: ``parts`` (terms x host levels) at its point, the correction's host
        level, measured/predicted latency. Only stored; summed when the interval closes."""
        with self._lock:
            if len(self._pending) < MAX_FRAMES_PER_INTERVAL:
                self._pending.append((parts, level, ratio, point))
            else:
                self._tainted = True

    def failed_frame(self) -> None:
        """A frame drew energy but has no latency: its interval cannot be used."""
        with self._lock:
            self._tainted = True

    def interval(self, energy_uj: float | None, wall_ns: float) -> bool:
        """The rail measured ``energy_uj`` over ``wall_ns`` (None: could not measure) since the
        previous call; the frames reported meanwhile are its frames. True when the scales applied
        to the grids changed."""
        with self._lock:
            pending, tainted = self._pending, self._tainted
            self._pending, self._tainted = [], False
            if energy_uj is None or tainted or not pending or energy_uj <= 0 or wall_ns <= 0:
                return False
            x = np.zeros(len(self.terms) + 1)
            terms = np.array([parts[:, level] for parts, level, _, _ in pending], dtype=float)
            ratio = np.array([p[2] for p in pending])
            stretch = np.where(self._whole_frame, ratio[:, None], float(np.median(ratio)))
            x[:-1] = (terms * stretch).sum(axis=0)
            points = {p[3] for p in pending}
            x[-1] = wall_ns * 1e-12  # so that its coefficient is a power in mW
            self._rows.append((x, energy_uj * 1e-6, frozenset(points)))
            self._since_fit += 1
            if self._since_fit < REFIT_EVERY:
                return False
            self._since_fit = 0
            return self._refit()

    # ---- the fit ----------------------------------------------------------------------------------
    def _refit(self) -> bool:
        X = np.array([r[0] for r in self._rows])
        y = np.array([r[1] for r in self._rows])
        points = len(frozenset().union(*(r[2] for r in self._rows)))
        Xr = X / y[:, None]  # relative errors: a 1 J interval counts as much as a 10 J one
        coef = self._solve(Xr, np.zeros(len(self.terms), dtype=bool))
        # a term the data do not pin down to MAX_SCALE_SE keeps its table (scale 1) and the others
        # are fitted again without it: a noisy rail must not trade memory against idle power freely
        se = _standard_errors(Xr, coef)
        keep = ~(se[:-1] <= MAX_SCALE_SE)
        if keep.any() and not keep.all():
            coef = self._solve(Xr, keep)
        before = float(np.sqrt(np.mean((Xr[:, :-1].sum(axis=1) - 1) ** 2)))
        after = float(np.sqrt(np.mean((Xr @ coef - 1) ** 2)))
        cols = Xr[:, :-1][:, Xr[:, :-1].any(axis=0)]
        norms = np.linalg.norm(cols, axis=0)
        cond = float(np.linalg.cond(cols / norms)) if cols.size else float("inf")
        scales = {t: round(float(s), 4) for t, s in zip(self.terms, coef[:-1], strict=True)}
        self.fitted = {"power_scales": scales, "offset_mw": round(float(coef[-1]), 1),
                       "fit_rel_rms": round(after, 4), "tables_rel_rms": round(before, 4),
                       "condition": round(cond, 1) if np.isfinite(cond) else None,
                       "intervals": len(y), "points": points,
                       "kept_tables": [t for t, k in zip(self.terms, keep, strict=True) if k]}
        why = []
        if keep.all():
            why.append("no term is pinned down by the measurements yet")
        if len(y) < MIN_INTERVALS:
            why.append(f"{len(y)} intervals measured, {MIN_INTERVALS} needed")
        if points < MIN_POINTS:
            why.append(f"{points} distinct points run, {MIN_POINTS} needed to tell the domains apart")
        if not cond < MAX_CONDITION:
            why.append(f"the terms are not separable yet (condition {cond:.3g} >= {MAX_CONDITION:g})")
        if after >= before:
            why.append("the fit does not explain the rail better than the tables")
        elif after > MAX_RESIDUAL:
            why.append(f"the fit leaves {after:.1%} relative error (> {MAX_RESIDUAL:.0%}): something "
                       "the energy model does not describe draws power")
        if why:
            self.note = "not applied: " + "; ".join(why)
            return False
        self.note = "applied"
        self.offset_mw = float(coef[-1])
        self.applied_fits += 1
        if np.allclose(coef[:-1], self.scales, rtol=1e-3, atol=0):
            return False  # the grids keep the scales they were computed with: no rebuild for noise
        self.scales = coef[:-1].copy()
        return True

    def _solve(self, Xr: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """Bounded least squares for the scales (``fixed`` terms held at 1) and the offset."""
        n_terms = len(self.terms)
        # each prior row weighs like PRIOR_INTERVALS intervals of its column (its mean share)
        w = np.sqrt(PRIOR_INTERVALS) * np.maximum(Xr.mean(axis=0), 1e-9)
        target = np.concatenate([np.ones(n_terms), [0.0]]) * w
        A = np.vstack([Xr, np.diag(w)])
        b = np.concatenate([np.ones(len(Xr)), target])
        lo, hi = self.bounds
        lb, ub = np.r_[[lo] * n_terms, 0.0], np.r_[[hi] * n_terms, np.inf]
        lb[:-1][fixed], ub[:-1][fixed] = 1.0, 1.0 + 1e-12
        # columns scaled to unit norm (the offset's is ~1e-4 of the others'), bounds with them;
        # BVLS: exact for a problem this small
        scale = np.maximum(np.linalg.norm(A, axis=0), 1e-12)
        from scipy.optimize import lsq_linear  # only here: the daemon starts without scipy

        return lsq_linear(A / scale, b, bounds=(lb * scale, ub * scale), method="bvls").x / scale

    # ---- use -------------------------------------------------------------------------------------
    def energy_mj(self, parts: np.ndarray) -> np.ndarray:
        """Grid energies (mJ) from a grid's ``energy_parts`` (terms x levels x points, J) at the
        applied scales."""
        return np.tensordot(self.scales, parts, axes=1).astype(float) * 1e3

    def status(self) -> dict:
        """For the governor's status: the scales in force per term, the offset, and the latest fit."""
        with self._lock:
            out = {"enabled": True, "power_scales": {t: round(float(s), 4) for t, s in
                                                     zip(self.terms, self.scales, strict=True)},
                   "offset_mw": round(self.offset_mw, 1), "bounds": list(self.bounds),
                   "samples": len(self._rows), "applied_fits": self.applied_fits, "note": self.note}
            if self.fitted is not None:
                out["fit"] = dict(self.fitted)
            return out
