"""Refining a board's OPP power tables from measured energy (pure: numbers in, tables out).

A board config's power tables are a starting point, not the truth: vendors' energy models are
coarse and a given chip's leakage differs. Where the board measures energy (sysfs_backends/
power_rails.py), each frame gives one equation the energy model must satisfy:

    measured = sum over domains d of  s[d, f_d] * P_d(f_d) * busy_d  +  s_idle * P_idle * elapsed

with ``P_d`` the table's power at the frequency in force (interpolated between OPPs exactly as the
energy model does: a frequency between OPPs k and k+1 spreads its term over both), ``busy_d`` the
domain's busy time and ``s`` the unknown corrections, one per OPP and domain plus one for idle power.
The fit is a non-negative least squares (scipy's NNLS: power is never negative) on relative
errors, so a 5 mJ frame counts as much as a 500 mJ one. Two stages, because frames at one point
all share the same busy/elapsed ratios and cannot separate the domains by themselves:

1. one scale per domain (and idle): robust with a handful of points;
2. one scale per OPP, pulled towards its domain's scale with a prior worth ``prior_weight``
   frames, so an OPP seen rarely or never keeps the domain's correction instead of a wild value.

The result gives corrected tables (``power_mw``) that drop into the board config in place of the
old ones; the governor's energy model then ranks points by what the board really draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import nnls

IDLE = "idle"


@dataclass(frozen=True)
class EnergySample:
    """Measured energy over an interval (one frame, or several at the same point summed)."""

    point: dict[str, int]  # domain -> frequency in force (the domain's unit)
    busy_ns: dict[str, float]  # domain -> time it was busy in the interval
    elapsed_ns: float  # the interval (the idle power is drawn throughout)
    measured_j: float


@dataclass(frozen=True)
class PowerTable:
    """One domain's OPP table and its power per OPP (mW), as in the board config."""

    frequencies: list[int]
    power_mw: list[float]


@dataclass
class PowerFit:
    """Corrections per domain and OPP, with how well each model explains the measurements."""

    tables: dict[str, PowerTable]
    idle_mw: float
    scale: dict[str, np.ndarray]  # per domain, per OPP
    domain_scale: dict[str, float]  # stage 1, per domain and idle
    samples_per_opp: dict[str, np.ndarray]
    rel_rms_before: float  # relative RMS error of the tables as given
    rel_rms_after: float
    samples: int
    notes: list[str] = field(default_factory=list)

    def power_mw(self, domain: str) -> list[float]:
        """The corrected table of ``domain`` (mW per OPP)."""
        t = self.tables[domain]
        return [round(float(p * s), 3) for p, s in zip(t.power_mw, self.scale[domain], strict=True)]

    @property
    def corrected_idle_mw(self) -> float:
        return round(self.idle_mw * float(self.scale[IDLE][0]), 3)

    def predict_j(self, sample: EnergySample, corrected: bool = True) -> float:
        """Energy the (corrected or original) tables give for a sample."""
        row = _row(sample, self.tables, self.idle_mw)
        return float(row @ (_flat(self.scale, self.tables) if corrected else np.ones_like(row)))


def _columns(tables: dict[str, PowerTable]) -> list[tuple[str, int]]:
    return [(d, k) for d, t in tables.items() for k in range(len(t.frequencies))] + [(IDLE, 0)]


def _flat(scale: dict[str, np.ndarray], tables: dict[str, PowerTable]) -> np.ndarray:
    return np.array([scale[d][k] for d, k in _columns(tables)])


def _row(s: EnergySample, tables: dict[str, PowerTable], idle_mw: float) -> np.ndarray:
    """The sample's features in J: each OPP's table power times the busy time it accounts for."""
    out = []
    for d, t in tables.items():
        feats = np.zeros(len(t.frequencies))
        f, busy = s.point.get(d), s.busy_ns.get(d, 0.0)
        if f is not None and busy > 0:
            freqs = np.asarray(t.frequencies, dtype=float)
            k = int(np.clip(np.searchsorted(freqs, f, side="right") - 1, 0, len(freqs) - 1))
            if k == len(freqs) - 1 or f <= freqs[0]:
                feats[k] = t.power_mw[k] * busy
            else:  # between OPPs k and k+1: the interpolated power, split between the two
                w = (f - freqs[k]) / (freqs[k + 1] - freqs[k])
                feats[k] = (1 - w) * t.power_mw[k] * busy
                feats[k + 1] = w * t.power_mw[k + 1] * busy
        out.append(feats)
    out.append(np.array([idle_mw * s.elapsed_ns]))
    return np.concatenate(out) * 1e-12  # mW x ns -> J


def fit_power_tables(samples: list[EnergySample], tables: dict[str, PowerTable], idle_mw: float,
                     prior_weight: float = 2.0) -> PowerFit:
    """Fit per-OPP corrections (module docstring). ``prior_weight``: how many frames' worth of
    evidence an OPP needs before it moves away from its domain's scale."""
    if not samples:
        raise ValueError("no energy samples to learn from")
    if any(s.measured_j <= 0 for s in samples):
        raise ValueError("measured energy must be positive in every sample")
    cols = _columns(tables)
    X = np.array([_row(s, tables, idle_mw) for s in samples])
    y = np.array([s.measured_j for s in samples])
    Xr, yr = X / y[:, None], np.ones(len(y))  # relative errors
    names = [*tables, IDLE]
    # stage 1: one scale per domain (columns summed per domain)
    group = np.array([[1.0 if c[0] == n else 0.0 for n in names] for c in cols])
    present = (Xr @ group).any(axis=0)
    s1 = np.ones(len(names))
    if present.any():
        s1[present], _ = nnls((Xr @ group)[:, present], yr)
    domain_scale = dict(zip(names, (float(v) for v in s1), strict=True))
    # stage 2: per OPP, with the prior rows sqrt(w) * (s_k - s_domain) = 0
    # each prior row weighs like ``prior_weight`` typical samples of its column: in the units of a
    # sample's relative error, a column's share of the frame energy where it appears
    seen = Xr > 0
    share = np.where(seen.any(axis=0), Xr.sum(axis=0) / np.maximum(seen.sum(axis=0), 1), Xr.max(initial=1.0))
    weight = np.sqrt(prior_weight) * np.maximum(share, 1e-6)
    prior = np.diag(weight)
    target = weight * np.array([domain_scale[d] for d, _ in cols])
    s2, _ = nnls(np.vstack([Xr, prior]), np.concatenate([yr, target]))
    scale = {n: np.array([s2[i] for i, (d, _) in enumerate(cols) if d == n]) for n in names}
    counts = {d: (X[:, [i for i, c in enumerate(cols) if c[0] == d]] > 0).sum(axis=0) for d in names}
    notes = [f"{d}: no sample with the domain busy; its table is kept" for d in tables if not counts[d].any()]
    return PowerFit(tables=tables, idle_mw=idle_mw, scale=scale, domain_scale=domain_scale,
                    samples_per_opp=counts, samples=len(samples), notes=notes,
                    rel_rms_before=float(np.sqrt(np.mean((X.sum(axis=1) / y - 1) ** 2))),
                    rel_rms_after=float(np.sqrt(np.mean((X @ s2 / y - 1) ** 2))))


def board_tables(board) -> tuple[dict[str, PowerTable], float]:
    """The tables of a ``BoardConfig`` (CPU, and GPU where it has one) and its idle power."""
    if not board.has_power_tables:
        raise ValueError(f"board {board.name!r} has no power tables to refine")
    tables = {"cpu": PowerTable(list(board.cpu.inference.frequencies_khz), list(board.cpu.inference.power_mw))}
    if board.gpu is not None:
        tables["gpu"] = PowerTable(list(board.gpu.frequencies_hz), list(board.gpu.power_mw))
    return tables, float(board.idle_power_mw)


def corrected_board(board, fit: PowerFit):
    """A copy of ``board`` whose power tables and idle power are the fitted ones."""
    out = board.model_copy(deep=True)
    out.cpu.inference.power_mw = fit.power_mw("cpu")
    if out.gpu is not None and "gpu" in fit.tables:
        out.gpu.power_mw = fit.power_mw("gpu")
    out.idle_power_mw = fit.corrected_idle_mw
    return out
