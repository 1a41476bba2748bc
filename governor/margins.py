"""The noise margin: how much above the corrected prediction a frame may run, so that misses stay at
the target rate.

Why not a plain quantile of recent residuals: at a 1% target a 300-frame window holds three
samples above the quantile, so the estimate jumps with every one of them, and the window keeps a
transient (the frames while the correction caught up with a load change) for its whole length.
Misses on real boards also come in clusters: the frame after a miss is far likelier to miss.

What is done instead, per (app, model), on the residual ratio r = measured / corrected prediction:

* **a fitted tail**: samples are weighted by age (half-life ``margin_half_life_frames``); above a
  threshold u (the weighted 80% quantile) the exceedances r - u are fitted with a generalized
  Pareto distribution by the method of moments, and the margin is the fitted quantile at the miss
  target: u + sigma/xi ((p_u/p)^xi - 1). A few hundred frames give a stable 1% quantile this way;
  below ``MIN_TAIL`` weighted exceedances the weighted empirical quantile is used;
* **clusters raise it at once**: when ``miss_cluster`` of the last ``cluster_window`` frames ran
  above the margin, the margin becomes the largest of those ratios (no waiting for the fit),
  measured against the fit as it is now: once the correction's bias has caught up with a slower
  regime the cluster no longer counts twice;
* **never twice**: the fitted margin times the fit's scale stays under the plain (1 - target) quantile of
  what was measured (against the uncorrected prediction) over the window, so a fit that has
  followed a regime and a margin that learned its lag do not add up;
* **and let go promptly**: the samples of a cluster are a transient (a load step, a burst), not the
  steady noise: once the cluster has passed (``cluster_window`` frames back under the margin) they
  fade with a short half-life (``CLUSTER_HALF_LIFE``), so the margin comes back down within tens
  of frames instead of a whole window. Isolated exceedances, the real tail, keep the long half-life;
* **and a regime's tail goes with it**: the samples taken while the correction's fit stood
  ``REGIME_DROP`` or more host levels above where it is now (a background load that has ended)
  fade with the same short half-life over the frames spent below: a loaded host's rare long
  delays are not the tail of an unloaded one.

numpy only (a closed-form fit). Per frame only what a frame can change is redone: the plain
quantile comes from a sorted copy of the window kept up to date (bisection, the very value
``np.quantile`` gives), and the tail is refitted when the new sample lies above its threshold
(the tail itself changed), while a cluster is under way or fading, and otherwise every
``REFIT_EVERY`` frames. Between refits the fit stands: ageing multiplies every weight by the same
factor, which changes neither the weighted quantiles nor the moments, so what the fit misses is a
few samples of the body (below the threshold) and the window's oldest samples going.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from statistics import NormalDist

import numpy as np

BODY_QUANTILE = 0.80  # threshold of the tail fit
MIN_TAIL = 8.0  # weighted exceedances needed before the tail is fitted
CLUSTER_HALF_LIFE = 8.0  # frames: how fast a passed cluster's samples fade
XI_RANGE = (-0.5, 0.45)  # shape of the fitted tail, kept where the moments exist
REFIT_EVERY = 16  # frames between refits of the tail while no sample exceeds its threshold
FADED = 10.0 * CLUSTER_HALF_LIFE  # frames after a cluster by which its samples no longer count (< 1e-3)
REGIME_DROP = 3  # host levels (1.06^3 = 1.19x) the fit must have come down by for a sample to be of
# a regime that has ended (see TailMargin.add's ``regime``)
REGIME_FRAMES = 24  # samples a regime must have lasted for its end to let them go (a burst's few
# frames are a cluster's business: faded with the regime too, the margin between the bursts of
# the SD888's MobileNetV2 fell and its burst rows cost 1.09-1.11x the oracle against 1.06-1.08x)
LEVELS = 64  # host levels a regime may name (the correction has 20)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q quantile of ``values`` with ``weights`` (the smallest value whose weight below and at
    it reaches q of the total)."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    k = int(np.searchsorted(cum, q * cum[-1]))
    return float(values[order[min(k, len(values) - 1)]])


def linear_quantile(ordered: list[float], q: float) -> float:
    """``np.quantile(values, q)`` (its default, linear interpolation, the same float operations)
    of values already sorted."""
    n = len(ordered)
    v = (n - 1) * q
    if v >= n - 1:
        return ordered[-1]
    if v < 0:
        return ordered[0]
    i = math.floor(v)
    g = v - i
    a, b = ordered[i], ordered[i + 1]
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g


def gpd_quantile(excess: np.ndarray, weights: np.ndarray, exceed_prob: float, target: float) -> float:
    """Quantile above the threshold at exceedance probability ``target`` of a generalized Pareto
    fitted (weighted method of moments) to ``excess`` (values minus the threshold), given that a
    sample exceeds the threshold with probability ``exceed_prob``."""
    total = float(weights.sum())
    mean = float((weights * excess).sum() / total)
    var = float((weights * (excess - mean) ** 2).sum() / total)
    if mean <= 0.0:
        return 0.0
    if var <= 0.0:
        return mean
    ratio = mean * mean / var
    xi = min(max(0.5 * (1.0 - ratio), XI_RANGE[0]), XI_RANGE[1])
    sigma = mean * (1.0 - xi)  # keeps the fitted mean when xi was clamped
    odds = max(exceed_prob / target, 1.0)
    if abs(xi) < 1e-6:
        return sigma * math.log(odds)
    return sigma / xi * (odds ** xi - 1.0)


FALLBACK_PRIOR = 1.10  # the margin before min_samples frames when the profile had no repeats


def prior_margin(log_sd: float, dof: int, target: float) -> float:
    """The margin before enough frames are measured, from the spread of the profile's repeats
    (estimator.repeat_noise): exp(z * sd_up). ``sd_up`` is the 90% upper confidence bound of the
    log standard deviation given ``dof`` (the chi-square quantile by Wilson-Hilferty: a few dozen
    repeats pin it to within ~20%); ``z`` the normal quantile at half the miss target, since a few
    repeats show the noise's body, not the rare outliers of its tail (measured: the SD888's models
    give 1.3-2.5% where their 99% frame-noise quantile is 1-2.6%, against the fixed 10% before)."""
    normal = NormalDist()
    a = 2.0 / (9.0 * dof)
    chi2_low = dof * max(1.0 - a + normal.inv_cdf(0.10) * math.sqrt(a), 1e-3) ** 3
    sd_up = log_sd * math.sqrt(dof / chi2_low)
    return math.exp(normal.inv_cdf(1.0 - target / 2.0) * sd_up)


class TailMargin:
    """The multiplier (>= 1) on a corrected prediction that leaves ``target`` of frames late."""

    def __init__(self, target: float, window: int, half_life_frames: float, min_samples: int,
                 initial: float, cluster: int = 2, cluster_window: int = 10) -> None:
        self.target = target
        self.half_life = float(half_life_frames)
        self.min_samples = min_samples
        self.cluster = cluster
        self.cluster_window = cluster_window
        self.ratios: deque[float] = deque(maxlen=window)
        self.raw: deque[float] = deque(maxlen=window)  # ratio x the fit's scale then
        self.transient: deque[bool] = deque(maxlen=window)  # the sample belonged to a miss cluster
        self.revised: deque[bool] = deque(maxlen=window)  # ``revise`` has taken it against a later fit
        self.since_cluster = math.inf  # frames since the last frame of a cluster
        self.base = initial  # the fitted margin before the cluster under way began
        self.fitted = initial
        self.value = initial
        self.steady = initial  # the margin without a cluster's boost (``Governor`` drops a boost
        # that no point can meet)
        self._raw_sorted: list[float] = []  # ``raw`` in ascending order (the plain quantile)
        self._threshold = -math.inf  # the tail fit's threshold u at the last refit
        self._low = math.inf  # the body's low end (weighted 1 - BODY_QUANTILE quantile) then
        self._since_fit = 0  # frames since the last refit
        self._transients = 0  # samples marked transient in the window
        self._decay: np.ndarray | None = None  # the age weights for a full window
        # regimes (``add``'s ``regime``): per sample the level it was taken at, and the count of
        # frames at or below that level less REGIME_DROP as of its arrival; ``_below[L]``: frames so far
        # whose regime was at or below L. A sample's frames since in a lower regime: the difference
        self.regimes: deque[int] = deque(maxlen=window)
        self._since: deque[int] = deque(maxlen=window)
        self._below = np.zeros(LEVELS, dtype=np.int64)
        self._regimes_sorted: list[int] = []  # ``regimes`` in ascending order (the highest, at once)
        self._ended = False  # ``_regime_ended`` as of the latest sample (its refit's weights)
        self.count = 0  # samples added so far: the next one's number (``revise``)

    def __len__(self) -> int:
        return len(self.ratios)

    @property
    def in_cluster(self) -> bool:
        return self.since_cluster < self.cluster_window

    def add(self, ratio: float, scale: float = 1.0,
            now_of: Callable[[int], float | None] | None = None, regime: int = 0) -> float:
        """One frame's measured / corrected-prediction ratio; returns the new margin. ``scale``: the
        fit's multiplier on the uncorrected prediction when the ratio was taken, so that a cluster
        the fit has since caught up with (the bias moved) stops raising the margin on top of it.
        ``now_of``: where the caller can, a sample's ratio against the fit as it is now, by the
        sample's number (None: not known); the cluster's boost uses it before ``raw / scale``.
        That quotient holds only for samples at one pair: ``scale`` is the fit's multiplier at the
        newest sample's pair, and a frame at another (the host a larger or smaller share of it)
        came out 20-30% over the fit it did meet (the demo's assistant, apps taking turns: its
        margin held at 1.26-1.32 for ten frames after a load step whose frames the fit already
        explained within 1-5%).

        ``regime``: the correction's host level now. The samples taken in a regime the fit has
        since come down from by REGIME_DROP levels or more, one that lasted (REGIME_FRAMES samples:
        a background load, not a burst), fade with
        CLUSTER_HALF_LIFE over the frames spent below it: the rare long delays of a loaded host
        are not the noise of an unloaded one, and with the long half-life they held MobileNetV2's
        margin at 1.07-1.12 for the sixty frames after a load (tight deadline, 1.07-1.13x the
        oracle at the miss target), where the unloaded frames' own tail was 1.05."""
        ratio = float(ratio)
        raw = ratio * scale
        regime = min(max(int(regime), 0), LEVELS - 1)
        self.count += 1
        if len(self.raw) == self.raw.maxlen:  # the oldest sample leaves the window
            gone = self.raw[0]
            del self._raw_sorted[bisect_left(self._raw_sorted, gone)]
            self._transients -= self.transient[0]
            del self._regimes_sorted[bisect_left(self._regimes_sorted, self.regimes[0])]
        self._below[regime:] += 1
        self.regimes.append(regime)
        insort(self._regimes_sorted, regime)
        threshold = regime - REGIME_DROP
        self._since.append(int(self._below[threshold]) if threshold >= 0 else 0)
        self.ratios.append(ratio)
        self.raw.append(raw)
        insort(self._raw_sorted, raw)
        self.transient.append(False)
        self.revised.append(False)
        level = self.base if self.in_cluster else self.fitted
        n, w = len(self.ratios), min(self.cluster_window, len(self.ratios))
        above = sum(1 for k in range(n - w, n) if self.ratios[k] > level)
        if ratio > level and above >= self.cluster:
            if not self.in_cluster:
                self.base = self.fitted
            # a cluster: its samples are a transient, and the margin covers them at once
            for k in range(n - w, n):
                if not self.transient[k] and self.ratios[k] > self.base:
                    self.transient[k] = True
                    self._transients += 1
            self.since_cluster = 0
        else:
            self.since_cluster += 1
        self._since_fit += 1
        self._ended = self._regime_ended()
        if n >= self.min_samples and (
                ratio > self._threshold or self._since_fit >= REFIT_EVERY or self.in_cluster
                or (self._transients and self.since_cluster < FADED + self.cluster_window)
                or self._ended):
            self.fitted = max(self._fit(), 1.0)
            self._since_fit = 0
        boost = 1.0
        if self.in_cluster:  # the cluster's slowest frame, against the fit as it is now
            boost = ratio
            for k in range(n - w, n - 1):
                now = now_of(self.count - n + k) if now_of is not None else None
                r = now if now is not None else self.raw[k] / scale
                if r > boost:
                    boost = r
        fitted = self.fitted
        if n >= self.min_samples:
            # never more than the plain quantile of what was measured asks for: a fit that follows
            # a regime quickly and a margin that learned the lag would otherwise count it twice
            plain = linear_quantile(self._raw_sorted, 1.0 - self.target)
            fitted = max(1.0, min(fitted, plain / scale))
        self.steady = fitted
        self.value = max(fitted, boost)
        return self.value

    def revise(self, numbers: list[int], ratios: list[float]) -> None:
        """Samples ``numbers`` (their place in the sequence of ``add``, the first 0) against the
        correction's fit as it stands now, ``ratios``; those no longer in the window are skipped.
        A sample that lay at or above the margin (or was revised before: the fit goes on catching
        up) and that the fit now explains (its ratio against
        the fit is back under the margin, or under the tail's threshold, and over the body's low
        end) takes its ratio against the fit: it ran slow because the regime changed (a load
        step, the first frame of a burst) while the fit lagged, and must not hold the margin up
        for a whole half-life as if it were the noise's tail (measured: one such frame at a load
        step kept the SD888's language model on a 12% costlier point for ~100 frames). A sample
        far under the body now belongs to the old regime and stays. Only such samples: revising
        every sample to the smallest of its ratios under later fits would pull the whole tail
        down by the fits' own jitter. (Under the tail's threshold alone was too strict where the
        noise is small: a fit still catching up left the lagged frame a little above it, and the
        sample kept the margin up.) The tail is refitted at the next sample."""
        n = len(self.ratios)
        body, low, level = self._threshold, self._low, self.value
        if not math.isfinite(body) or not math.isfinite(low):
            return
        explained = max(body, level)
        for number, new in zip(numbers, ratios, strict=True):
            k = n - (self.count - number)
            # far under the body: a sample of the old regime, kept
            if (0 <= k < n and (self.ratios[k] >= level or self.revised[k])
                    and low <= new <= explained and new < self.ratios[k]):
                self.ratios[k] = float(new)
                self.revised[k] = True
                self._since_fit = REFIT_EVERY

    def _regime_ended(self) -> bool:
        """Whether REGIME_FRAMES or more of the window's samples were taken REGIME_DROP or more
        levels above the regime now."""
        above = len(self._regimes_sorted) - bisect_left(self._regimes_sorted, self.regimes[-1] + REGIME_DROP)
        return above >= REGIME_FRAMES

    def _weights(self) -> np.ndarray:
        n = len(self.ratios)
        if self._decay is None or len(self._decay) != n:
            self._decay = 0.5 ** (np.arange(n - 1, -1, -1, dtype=float) / self.half_life)
        w = self._decay
        if self._ended:  # a regime has ended: its samples go
            levels = np.fromiter(self.regimes, np.int64, n) - REGIME_DROP
            since = np.fromiter(self._since, np.int64, n)
            away = np.where(levels >= 0, self._below[np.maximum(levels, 0)] - since, 0)
            w = w * 0.5 ** (away / CLUSTER_HALF_LIFE)
        if self._transients and not self.in_cluster:  # the cluster has passed: its samples go, quickly
            transient = np.fromiter(self.transient, bool, n)
            gone = max(0.0, self.since_cluster - self.cluster_window + 1)
            w = np.where(transient, w * 0.5 ** (gone / CLUSTER_HALF_LIFE), w)
        return w

    def _fit(self) -> float:
        r = np.fromiter(self.ratios, float, len(self.ratios))
        w = self._weights()
        keep = w >= 1e-3 * w.max()
        r, w = r[keep], w[keep]
        u = self._threshold = weighted_quantile(r, w, BODY_QUANTILE)
        self._low = weighted_quantile(r, w, 1.0 - BODY_QUANTILE)
        tail = r > u
        tail_w = float(w[tail].sum())
        if tail_w < MIN_TAIL * float(w.max()) or tail.sum() < 3:
            return weighted_quantile(r, w, 1.0 - self.target)
        p_u = tail_w / float(w.sum())
        q = u + gpd_quantile(r[tail] - u, w[tail], p_u, self.target)
        # a fit never reaches beyond what the samples that still count have shown
        return min(q, float(r[w >= 0.1 * w.max()].max()))
