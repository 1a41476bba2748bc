"""Online correction of the estimator from measured frame latencies.

The estimator is fitted once; at run time the world drifts: another process takes CPU time from
the inference thread, the phone warms up, the driver behaves differently from the profile. Two
things are learned per model from the frames just measured:

* a host slowdown ``s`` (the host segments take ``s`` times longer than profiled) and a bias ``b``
  (every prediction off by a factor), fitted together over the recent frames: for each candidate
  ``s`` the grid was precomputed with the host segments stretched, ``b`` is the median residual,
  and the pair with the smallest absolute log error wins. Frames at different frequency pairs tell
  the two apart (a slow host hurts low CPU clocks most); where they cannot, the host is blamed
  first (the ``s`` whose ``b`` is closest to 1), and the next frames at the new pair confirm it or
  move the blame to ``b``. This is what lets the governor answer background load with CPU frequency alone, as the
  oracle does, instead of raising both domains;
* a spread: the margin on measured / (b x L_s), each frame against the fit that includes it: the
  noise the deadline must absorb for the miss rate to stay at the target. governor/margins.py
  supplies it (a fitted tail, raised at once by a cluster of misses, let go once it has passed).

Adaptation is asymmetric on purpose: a fit over the last few frames may raise the prediction at
once (a deadline is at stake); lowering waits for the longer window, unless the last few frames all
ran faster than every older one (a burst or a load has ended: a drop that noise alone makes once in
thousands of frames), when the fast window's fit is taken at once.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from governor.config import GovernorSettings
from governor.margins import FALLBACK_PRIOR, TailMargin

# host slowdowns the grid is precomputed for: 6% apart up to 3x. A level 15-25% off the real load
# (another process taking 40% of the core is 1.67x), as the earlier eight levels could be, leaves
# the rest to the bias, which stretches the GPU side too. Measured on the SD888 with the language
# model at a tight deadline (one run each): with eight levels the load phase had 14 misses against
# the target oracle's 1; at 6% steps 5 against 4, at 1.09-1.12x its energy. The price: a grid per
# context bucket takes 2.3x as long (106 ms for that model, in the daemon's worker process)
HOST_LEVELS = np.round(1.06 ** np.arange(20), 4)
FIT_WINDOW = 24
FAST_WINDOW = 6
DROP_WINDOW = 4  # frames all faster than every older one: the regime dropped (see Correction._dropped)
PASSED_WINDOW = 2  # frames back at the whole window's fit that end a spell the fast window followed
DROP_OLDER = 8  # older frames the test needs (C(12, 4) = 495 orderings at the least)
REGIME_LOG = 0.15  # |log| move of the host slowdown or bias that counts as another regime (not the
# level-for-bias reshuffles of the fit at one pair, a step or two of HOST_LEVELS)
TIE_TOLERANCE = 0.003  # mean |log error| within this of the best counts as a tie


class Correction:
    def __init__(self, settings: GovernorSettings, prior: float | None = None) -> None:
        """``prior``: the margin until ``min_samples`` frames are measured (``initial_margin``
        when that is set, else this, else FALLBACK_PRIOR)."""
        self.settings = settings
        initial = (1.0 + settings.initial_margin if settings.initial_margin is not None
                   else prior if prior is not None else FALLBACK_PRIOR)
        self.frames: deque[tuple[np.ndarray, float]] = deque(maxlen=FIT_WINDOW)
        # the same frames as arrays, oldest first once full (a ring): the fit runs on these without
        # building arrays from the deque on every frame
        self._pred = np.zeros((FIT_WINDOW, len(HOST_LEVELS)))
        self._meas = np.zeros(FIT_WINDOW)
        self._next = 0
        # the noise margin's latest samples (fitted frames and the waited frames of
        # ``add_tail_only`` alike), as a ring: what each measured, its prediction per host level,
        # the fit it was taken against (host slowdown, bias) and its number in the margin's
        # sequence, so that a sample the fit now explains is revised, and that sample only. Sample
        # number k lies in row k % FIT_WINDOW (only ``_feed_margin`` adds to the margin)
        self._m_pred = np.zeros((FIT_WINDOW, len(HOST_LEVELS)))
        self._m_meas = np.zeros(FIT_WINDOW)
        self._m_then = np.ones((FIT_WINDOW, 2))
        self._m_seq = np.full(FIT_WINDOW, -1, dtype=np.int64)
        self.margin = TailMargin(settings.miss_rate_target, settings.correction_window,
                                 settings.margin_half_life_frames, settings.min_samples,
                                 initial, settings.miss_cluster,
                                 settings.cluster_window)
        self.level = 0  # index into HOST_LEVELS
        self.bias = 1.0
        self.spread = initial

    @property
    def host_slowdown(self) -> float:
        return float(HOST_LEVELS[self.level])

    @property
    def factor(self) -> float:
        """Multiplier on the latency at ``host_slowdown``: bias x spread x (1 + margin)."""
        return self.bias * self.spread * (1.0 + self.settings.margin)

    @property
    def steady_factor(self) -> float:
        """``factor`` without a miss cluster's boost: the margin the noise's tail asks for alone
        (equal to ``factor`` while no cluster is under way or fading; ``spread`` is the margin's
        value, never under its steady part)."""
        return self.bias * self.margin.steady * (1.0 + self.settings.margin)

    def add(self, column: np.ndarray, measured_ms: float, stalled_ms: float = 0.0) -> None:
        """``column``: the frame's predicted latency at its pair for each of HOST_LEVELS;
        ``stalled_ms``: of what it measured, the time frequency changes stalled it (another app's
        write, a cap). The fit learns from the rest: a stall is not a slower host or a bias,
        and the next frame at any point may or may not meet one. The noise margin sees the whole
        measured time: a change in the middle of a frame is part of what the deadline must
        absorb."""
        fitted_ms = max(measured_ms - stalled_ms, 1e-9)
        before = (HOST_LEVELS[self.level], self.bias)  # the fit it was predicted under
        self.frames.append((column, fitted_ms))
        self._pred[self._next] = column
        self._meas[self._next] = fitted_ms
        self._next = (self._next + 1) % FIT_WINDOW
        n = len(self.frames)
        pred, meas = (self._pred, self._meas) if n == FIT_WINDOW else (self._pred[:n], self._meas[:n])
        # the ratios of the whole window; the fast window's are some of its rows (the same values)
        ratio = meas[:, None] / np.maximum(pred, 1e-9)
        level, bias = self._fit_ratio(ratio)
        if n > FAST_WINDOW:
            fast_level, fast_bias = self._fit_ratio(ratio[_LAST[FAST_WINDOW][self._next]])
            current = column
            if (fast_bias * current[fast_level] > bias * current[level]
                    and not self._passed(ratio, level, bias, fast_level, fast_bias)) or (
                    n >= DROP_OLDER + DROP_WINDOW and self._dropped(ratio[:, level], n)):
                level, bias = fast_level, fast_bias
        self.level, self.bias = level, bias
        self._revise_margin()
        # the noise around the current fit (not the lag while it was catching up, which the fast
        # window handles): what the deadline must absorb
        self._feed_margin(column, measured_ms, before)

    def _revise_margin(self) -> None:
        """The margin's recent samples taken against a fit of another regime (host slowdown or
        bias since moved by more than REGIME_LOG: a load step, a burst), against the fit as it is
        now: one that ran slow while the fit lagged behind the change is explained now, its
        residual was the lag, not the noise (``TailMargin.revise``). Each sample is revised by
        its own number: a waited frame's sample lies between the fitted frames' in the margin,
        and matched by position (as before) the revisions fell on the wrong samples wherever
        apps took turns on the GPU (the demo's assistant: half of its frames), and its margin kept
        a load step's lag."""
        valid = self._m_seq >= 0
        level, bias = self.level, self.bias
        other = valid & (np.abs(np.log(self._m_then / (HOST_LEVELS[level], bias))).max(axis=1) > REGIME_LOG)
        if other.any():
            now = self._m_meas[other] / np.maximum(bias * self._m_pred[other, level], 1e-9)
            self.margin.revise(self._m_seq[other].tolist(), now.tolist())

    def add_tail_only(self, column: np.ndarray, measured_ms: float) -> None:
        """A frame the fit does not learn from (most of it was a predicted wait behind other apps'
        GPU work: its own time is known only as far as that wait was right) still feeds the noise
        margin, with what it measured less the wait predicted: the deadline is checked on its own
        time plus that wait, and a burst of slow frames, or a wait longer than predicted, shows
        here first. Left out, the decoder sharing the SD888's GPU with a detector ran 16 of its
        tokens late in the clustered slow frames against the joint oracle's 0, its margin blind to
        them; fed here, 3-5 (at 1.07x the joint oracle's energy instead of 1.02x, two runs). A
        margin of its own for the waits (taken over predicted) cost far more: 1.21-1.30x, its
        tail set by small waits predicted a millisecond off. The fit (host slowdown and bias) is
        left as it is."""
        self._feed_margin(column, measured_ms)

    def _feed_margin(self, column: np.ndarray, measured_ms: float, then: tuple | None = None) -> None:
        """The frame's ratio to the current fit goes to the noise margin: the spread. ``then``:
        the fit (host slowdown, bias) the frame was predicted under, if not the current one; a
        later fit far from it revises the sample (``_revise_margin``)."""
        expected = self.bias * float(column[self.level])
        if expected > 0:
            number = self.margin.count
            k = number % FIT_WINDOW
            self._m_pred[k] = column
            self._m_meas[k] = measured_ms
            self._m_then[k] = then if then is not None else (HOST_LEVELS[self.level], self.bias)
            self._m_seq[k] = number
            self.spread = self.margin.add(measured_ms / expected, expected / max(float(column[0]), 1e-9),
                                          self._now_of, self.level)

    def _now_of(self, number: int) -> float | None:
        """The margin's sample ``number`` against the fit as it is now (None once it has left the
        ring): its measured time over the current fit's prediction at its own pair."""
        k = number % FIT_WINDOW
        if self._m_seq[k] != number:
            return None
        expected = self.bias * float(self._m_pred[k, self.level])
        return float(self._m_meas[k]) / expected if expected > 0 else None

    def _passed(self, ratio: np.ndarray, level: int, bias: float, fast_level: int, fast_bias: float) -> bool:
        """Whether a spell the fast window followed up has passed: its latest PASSED_WINDOW frames
        each ran as the whole window's fit says (within the noise margin) and faster than the
        fast window's fit by more than that margin. The fast window's median holds a burst's
        frames for half its length after the burst: the SD888's language model ran its first 3-4
        frames after each of its bursts of 35% slow frames at the top point (tight deadline) and
        paid for it. A load that goes on does not pass this (its frames run as the fast fit
        says), nor does one frame back at the old speed (it takes PASSED_WINDOW in a row)."""
        rows = _LAST[FAST_WINDOW][self._next][-PASSED_WINDOW:]
        noise = max(self.margin.steady, 1.0)
        whole = ratio[rows, level] / bias
        fast = ratio[rows, fast_level] / fast_bias
        return bool((whole <= noise).all() and (fast * noise < 1.0).all())

    def _dropped(self, ratio: np.ndarray, n: int) -> bool:
        """Whether the latest DROP_WINDOW frames all ran faster, against the fit, than every older
        frame of the window: the regime has dropped (a burst or a background load has ended). By
        chance, with nothing changed, that is one ordering in C(n, DROP_WINDOW) (1 in 10626 for a
        full window). Lowering then follows the fast window instead of waiting for the long
        window's median to turn, which held a burst's fast point for ~12 frames after it ended."""
        rows = _LAST[n][self._next]
        return float(ratio[rows[-DROP_WINDOW:]].max()) < float(ratio[rows[:-DROP_WINDOW]].min())

    @staticmethod
    def _fit(frames: list[tuple[np.ndarray, float]]) -> tuple[int, float]:
        return Correction._fit_arrays(np.stack([c for c, _ in frames]), np.array([m for _, m in frames]))

    @staticmethod
    def _fit_arrays(pred: np.ndarray, measured: np.ndarray) -> tuple[int, float]:
        """``pred`` (frames, levels), ``measured`` (frames,)."""
        return Correction._fit_ratio(measured[:, None] / np.maximum(pred, 1e-9))

    @staticmethod
    def _fit_ratio(ratio: np.ndarray) -> tuple[int, float]:
        """``ratio`` (frames, levels): measured / predicted latency."""
        # the median per level from one sort (np.median costs ten times more on arrays this small)
        ordered = np.sort(ratio, axis=0)
        n = len(ordered)
        bias = ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])  # (levels,)
        cost = (np.abs(np.log(ratio / bias)).sum(axis=0) / n).tolist()
        least = min(cost) + TIE_TOLERANCE
        ties = [k for k, c in enumerate(cost) if c <= least]
        if len(ties) == 1:
            return ties[0], float(bias[ties[0]])
        # Where the frames cannot tell the causes apart (all at one pair), blame the host first:
        # the explanation whose bias is closest to 1. Other load on the inference CPU is the
        # common drift; GPU-side slowdowns from thermal caps show up as lower frequencies instead.
        off = np.abs(np.log(bias[ties])).tolist()
        level = ties[off.index(min(off))]
        return level, float(bias[level])


# _LAST[n][k]: the ring's rows of its last n frames, oldest first, when the next write goes to row k
# (before the ring is full k is the number of frames, and these are rows k - n .. k - 1)
_LAST = {n: [np.arange(k - n, k) % FIT_WINDOW for k in range(FIT_WINDOW)] for n in range(1, FIT_WINDOW + 1)}
