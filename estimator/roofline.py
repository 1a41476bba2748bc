"""Segment times that depend on the memory clock: a roofline, not a sum of ``1/f`` terms.

A GPU kernel is compute-bound (its time follows the GPU clock) or memory-bound (it follows the
memory clock), and it moves between the two as the clocks change: at a high GPU clock and a low
memory clock a convolution waits on DRAM; at a low GPU clock the same convolution is compute-bound
again. A sum ``a / f_gpu + m / f_mem`` charges both at once and was what public Orin measurements
showed failing (tens of % off at another EMC clock). So, with ``x_d = f_ref / f_d`` for each domain:

    t = a * R_p(x_own, theta * x_mem * h(x_own)) + s * x_own + b     R normalised: R(1, 1) = 1
    R_p(u, v) = ((u^p + v^p) / (1 + theta^p)) ^ (1/p)                 a soft maximum (p-norm)
    h(u) = 1 / (1 - sigma + sigma / u)

``own`` is the clock the work runs on (the GPU for a kernel, the CPU for host work: launches, host
operators, synchronisation, whose memory traffic is the CPU's). ``h`` is the bandwidth the own side
achieves falling a little with its own clock (on SoCs the GPU's L2 and interconnect run on the GPU
clock): ``sigma`` is the share of that bandwidth tied to the own clock, one value per kind of
segment for the whole profile (chosen from a few candidates by the total error over every segment
of that kind, so hundreds of segments pin down one number). ``theta`` is the memory part's size
against the compute part at the highest clocks, ``p`` the sharpness of the transition (``p = 1``: the
two add, as a host operator's compute and its DRAM read-back do; large ``p``: a hard ``max``).
``s * x_own`` is work on the own clock that no memory access hides (kernel set-up cycles, a launch's
CPU work) and ``b`` what no clock here moves (driver, interrupt latency). Language models add the
same amplitude and constant times the normalised context length (``a_ctx``, ``b_ctx``).

Fitting: ``(theta, p)`` are searched on a grid shared by every segment (the designs depend only on
the profiled points, so one batch of tiny least-squares problems ranks every candidate for every
segment at once); the best few per segment are solved exactly with non-negative least squares on
relative error and the winner refitted with Huber weights (estimator.fit._robust_nnls), so one
outlying point is down-weighted instead of bending the curve. Repeats at a point are reduced to
their median first. A segment seen at too few points to identify this (fewer than its columns + 2)
keeps ``p = 2`` and searches ``theta`` alone.

Evaluation is cheap over a grid: ``R`` depends only on the pair (own, memory) frequency, so it is
computed once per distinct pair of the two tables and gathered to the grid's points.
"""

from __future__ import annotations

import warnings

import numpy as np

from estimator.fit import _robust_nnls

P_CANDIDATES = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 8.0])
THETA_CANDIDATES = np.logspace(-2.5, 2.5, 31)  # memory part / compute part at the highest clocks
SHORTLIST = 6  # candidates per segment, by each of two rankings, solved exactly (non-negative)
FALLBACK_P = 2.0
SIGMA_CANDIDATES = (0.0, 0.1, 0.2, 0.3)
GAMMA_CANDIDATES = (0.0, *np.logspace(-2, 2, 17))  # whole-model fits: the CPU's share in the max
Q_CANDIDATES = (2.0, 4.0, 8.0)  # whole-model fits: sharpness between the host and the device
ROOF_WIDTH = 7  # a roofline row: amplitude, amplitude per context, theta, p, sigma, gamma, q


def roofline(xu: np.ndarray, xm: np.ndarray, theta, p, sigma=0.0, xc=None, gamma=0.0, q=1.0,
             device_scale=1.0) -> np.ndarray:
    """R_p(x_own, theta * x_mem * h(x_own)), 1 at the highest clocks; broadcasts. With ``gamma``
    > 0 (whole-model fits) the result meets the CPU's ``gamma * x_cpu`` in an outer soft maximum
    of sharpness ``q``: the host's launch stream and the device overlap, so the slower of the two
    sets the pace (each normalised to 1 at the highest clocks). ``device_scale`` stretches the
    device side only, inside that maximum: a language model's ``1 + kappa * ell``, since its
    attention grows with the context on the device while the host's launches stay as many."""
    tp = np.power(theta, p)
    v = xm / (1.0 - sigma + sigma / xu)
    r = np.power((np.power(xu, p) + tp * np.power(v, p)) / (1.0 + tp), 1.0 / p) * device_scale
    if xc is None:
        return r
    return _host_device_max(r, xc, gamma, q)


def _host_device_max(r: np.ndarray, xc: np.ndarray, gamma, q) -> np.ndarray:
    """The soft maximum of the host's ``gamma * x_cpu`` and the device's ``r`` (see roofline);
    ``r`` itself where gamma is 0."""
    gamma, q = np.asarray(gamma, float), np.asarray(q, float)
    if not np.any(gamma > 0):
        return r
    gq = np.power(gamma, q)
    return np.power((gq * np.power(xc, q) + np.power(r, q)) / (1.0 + gq), 1.0 / q)


def _candidates(few_points: bool) -> tuple[np.ndarray, np.ndarray]:
    ps = np.array([FALLBACK_P]) if few_points else P_CANDIDATES
    th, pp = np.meshgrid(THETA_CANDIDATES, ps, indexing="ij")
    return th.ravel(), pp.ravel()


def fit_roofline_columns(
    features: np.ndarray,
    lin_cols: list[int],
    xu: np.ndarray,
    xm: np.ndarray,
    ell: np.ndarray | None,
    y: np.ndarray,
    sparse: str = "constant",
) -> tuple[np.ndarray, np.ndarray]:
    """Fit every column of ``y`` (see ``_fit_at_sigma``) at each candidate ``sigma``; keep the one
    with the least total relative error over the columns."""
    best = None
    for sigma in SIGMA_CANDIDATES:
        coef, roof, err = _fit_at_sigma(features, lin_cols, xu, xm, ell, y, sparse, sigma)
        total = float(np.nansum(err))
        if best is None or total < best[0] * (1 - 1e-6):
            best = (total, coef, roof)
    return best[1], best[2]


def _fit_at_sigma(
    features: np.ndarray,
    lin_cols: list[int],
    xu: np.ndarray,
    xm: np.ndarray,
    ell: np.ndarray | None,
    y: np.ndarray,
    sparse: str,
    sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit every column of ``y`` (runs, segments; NaN = unobserved) with the model above.

    ``features`` is estimator.fit.domain_design's matrix (runs, k); ``lin_cols`` the columns of it
    the segment may use linearly (its own clock's ``x`` and the constant, and their context copies).
    ``xu``/``xm`` are the runs' own-clock and memory ``x``; ``ell`` the normalised context (None
    without one). Returns (coefficients (segments, k) over all of ``features``' columns, zero where
    unused, and roofline rows (segments, ROOF_WIDTH)); NaN rows where a column was never observed.
    A column seen at no more distinct points than the model has columns cannot pin any of this
    down: it falls back to its median as a constant (``sparse="constant"``) or to pure scaling
    with the own clock (``sparse="own"``, for host work seen only at some points).
    """
    from scipy.optimize import nnls  # only fitting needs scipy (see estimator.fit)

    y = y[:, None] if y.ndim == 1 else y
    n_seg = y.shape[1]
    ctx = np.zeros(len(xu)) if ell is None else np.asarray(ell, float)
    keys_all = np.column_stack([features, xu, xm, ctx])
    keys, group = np.unique(keys_all, axis=0, return_inverse=True)
    group = group.ravel()
    n_groups = len(keys)
    med = np.full((n_groups, n_seg), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a segment never seen at a point: NaN
        for g in range(n_groups):
            med[g] = np.nanmedian(y[group == g], axis=0)
    kf = features.shape[1]
    lin = keys[:, lin_cols]
    gu, gm, gl = keys[:, kf], keys[:, kf + 1], keys[:, kf + 2]
    n_roof = 1 if ell is None else 2
    k = n_roof + len(lin_cols)
    coef_out = np.full((n_seg, kf), np.nan)
    roof_out = np.full((n_seg, ROOF_WIDTH), np.nan)
    err_out = np.zeros(n_seg)
    observed = ~np.isnan(med)
    counts = observed.sum(axis=0)
    for s in np.flatnonzero((counts >= 1) & (counts <= k)):
        seen = observed[:, s]
        roof_out[s] = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
        coef_out[s] = 0.0
        if sparse == "own":
            own_col = lin_cols[0]
            coef_out[s, own_col] = max(float(np.median(med[seen, s] / keys[seen, own_col])), 0.0)
        else:
            coef_out[s, lin_cols[-1 if ell is None else -2]] = max(float(np.median(med[seen, s])), 0.0)
    for few in (False, True):
        segs = np.flatnonzero((counts >= k + 2) if not few else ((counts > k) & (counts < k + 2)))
        if not len(segs):
            continue
        theta, p = _candidates(few)
        r = roofline(gu[None, :], gm[None, :], theta[:, None], p[:, None], sigma)  # (C, G)
        cols = [r] if ell is None else [r, r * gl[None, :]]
        x = np.concatenate([np.stack(cols, axis=2), np.broadcast_to(lin, (len(theta), *lin.shape))],
                           axis=2)  # (C, G, k)
        ys = np.nan_to_num(med[:, segs])  # (G, S)
        scale = np.maximum(np.nanmax(med[:, segs], axis=0), 1.0)
        ys = ys / scale  # each segment in units of its largest time: the ranking's numbers are O(1)
        w2 = np.where(observed[:, segs], 1.0 / np.maximum(ys, 1e-9) ** 2, 0.0)  # relative error
        gram = np.einsum("cgi,cgj,gs->csij", x, x, w2)
        rhs = np.einsum("cgi,gs->csi", x, w2 * ys)
        yy = (w2 * ys * ys).sum(axis=0)  # (S,)
        ridge = 1e-9 * np.trace(gram, axis1=2, axis2=3)[..., None, None] * np.eye(k) + 1e-12 * np.eye(k)
        sol = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]

        def sse_of(b, yy=yy, rhs=rhs, gram=gram):
            return yy[None, :] - 2 * (b * rhs).sum(-1) + np.einsum("csi,csij,csj->cs", b, gram, b)

        # the unconstrained optimum bounds the non-negative one from below, the clipped solution
        # (a feasible point) from above: the shortlist takes the best candidates by each
        shortlist = np.concatenate([np.argsort(sse_of(np.clip(sol, 0, None)), axis=0)[:SHORTLIST],
                                    np.argsort(sse_of(sol), axis=0)[:SHORTLIST]])
        for j, s in enumerate(segs):
            seen = observed[:, s]
            yo = med[seen, s]
            wo = 1.0 / np.maximum(yo, 1.0)
            best, best_err = None, np.inf
            for c in np.unique(shortlist[:, j]):
                xo = x[c][seen]
                coef, _ = nnls(xo * wo[:, None], yo * wo)
                err = float(np.sum(((xo @ coef - yo) * wo) ** 2))
                if err < best_err:
                    best, best_err = (c, coef), err
            c, _ = best
            coef = _robust_nnls(x[c][seen], yo) if seen.sum() > k else best[1]
            err_out[s] = best_err
            roof_out[s] = [coef[0], coef[1] if ell is not None else 0.0, theta[c], p[c], sigma, 0.0, 1.0]
            full = np.zeros(kf)
            full[lin_cols] = coef[n_roof:]
            coef_out[s] = full
    return coef_out, roof_out, err_out


def roofline_term(roof: np.ndarray, xu: np.ndarray, xm: np.ndarray, ell: np.ndarray | None,
                  xc: np.ndarray | None = None, kappa: float = 0.0) -> np.ndarray:
    """(segments, points): ``(a + a_ctx * ell) * R`` for roofline rows ``roof`` (segments, 7) at
    points with own-clock ``xu`` and memory ``xm`` (points,). R is computed once per distinct
    (own, memory) pair and gathered: a grid has few of them. Rows with a CPU share (whole-model
    fits, ``xc`` given) are computed at every point, their device side stretched by
    ``1 + kappa * ell`` (a whole-model fit's device growth with the context)."""
    if xc is not None and (np.any(roof[:, 5] > 0) or kappa):
        ell_pts = np.zeros_like(xu) if ell is None else np.asarray(ell, float)
        amp = roof[:, 0:1] + roof[:, 1:2] * ell_pts[None, :]
        r = roofline(xu[None, :], xm[None, :], roof[:, 2:3], roof[:, 3:4], roof[:, 4:5], xc[None, :],
                     roof[:, 5:6], roof[:, 6:7], 1.0 + kappa * ell_pts[None, :])
        return amp * r
    uu, iu = np.unique(xu, return_inverse=True)
    um, im = np.unique(xm, return_inverse=True)
    theta, p, sigma = roof[:, 2:3, None], roof[:, 3:4, None], roof[:, 4:5, None]
    table = roofline(uu[None, :, None], um[None, None, :], theta, p, sigma)  # (S, nu, nm)
    flat = iu.ravel() * len(um) + im.ravel()  # each point's (own, memory) cell
    if ell is None:  # fold the amplitude in before the gather: one pass over (S, points)
        return np.take((table * roof[:, 0:1, None]).reshape(len(roof), -1), flat, axis=1)
    r = np.take(table.reshape(len(roof), -1), flat, axis=1)
    return (roof[:, 0:1] + roof[:, 1:2] * np.asarray(ell, float)[None, :]) * r


CV_SHORTLIST = 40  # whole-model candidates compared by leave-one-point-out error
# whole-model fits of a language model: the device side's growth per normalised context
KAPPA_CANDIDATES = (0.0, *np.logspace(-1.5, 1.5, 13))


def fit_whole_model(
    features: np.ndarray,
    lin_col_sets: list[list[int]],
    xu: np.ndarray,
    xm: np.ndarray,
    ell: np.ndarray | None,
    y: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """An end-to-end profile's latency (runs,) as one roofline with the CPU in an outer soft
    maximum (``roofline`` with ``gamma``) plus linear terms: ``_WholeFit`` for each set of linear
    columns (fewer and more terms beside the roofline); the one with the least leave-one-point-out
    error wins. A set that leaves leave-one-out no point to spare (points <= its terms + 1: every
    fold threads its points, so any shape looks as good) is tried only when no other can be.
    Returns (coefficients (1, k), roofline row (1, ROOF_WIDTH), kappa: the device side's growth
    per normalised context)."""
    fit = _WholeFit(features, xu, xm, ell, y)
    n_points = len(np.unique(np.column_stack([features, xu, xm]), axis=0))
    posed = [c for c in lin_col_sets if n_points >= fit.n_roof + len(c) + 2] or lin_col_sets
    best, refusal = None, None
    for cols in posed:
        try:
            fitted = fit.solve(cols)
        except ValueError as exc:
            refusal = refusal or exc
            continue
        if best is None or fitted[3] < best[3]:
            best = fitted
    if best is None:
        raise refusal
    return best[0], best[1], best[2]


class _WholeFit:
    """The whole-model fit's search. The model has more shape parameters than a segment (gamma,
    q, theta, p, sigma) for the same handful of points, so the training error alone would pick a
    shape that threads the points and bends between them: every candidate is ranked by its
    training error (batched, as for segments), and the best ``CV_SHORTLIST`` are compared by
    leave-one-point-out error, which is what an unprofiled point will see.

    A language model's context stretches the device side only (``kappa``, searched like the
    shape): its host launches as many kernels at every context, so at a slow CPU the host stream
    sets the pace whatever the context while at a fast one the device's attention grows with it;
    one amplitude on the whole maximum cannot say both (it was what the H200's language model
    missed by). An amplitude per context on the whole maximum and the serial part's constant per
    context stay (columns), for growth on both sides. Repeats at a point are reduced to their
    median first; the candidates' roofline columns are built once per kappa and shared by every
    set of linear columns."""

    def __init__(self, features: np.ndarray, xu: np.ndarray, xm: np.ndarray, ell: np.ndarray | None,
                 y: np.ndarray) -> None:
        ctx = np.zeros(len(xu)) if ell is None else np.asarray(ell, float)
        keys, group = np.unique(np.column_stack([features, xu, xm, ctx]), axis=0, return_inverse=True)
        group = group.ravel()
        self.med = np.array([np.median(y[group == g]) for g in range(len(keys))])
        self.kf = kf = features.shape[1]
        self.keys = keys
        self.gc, self.gu, self.gm, self.gl = keys[:, 0], keys[:, kf], keys[:, kf + 1], keys[:, kf + 2]
        self.lm = ell is not None
        self.n_roof = 2 if self.lm else 1
        self.shapes = _whole_shapes()
        self.kappas = KAPPA_CANDIDATES if self.lm else (0.0,)
        self.yn = np.maximum(self.med / self.med.max(), 1e-9)  # in units of the longest: O(1)
        self._roof_cache: dict[int, np.ndarray] = {}
        self._inner = None

    def roof_columns(self, ki: int, which: np.ndarray | None = None) -> np.ndarray:
        """(C, G, n_roof) roofline columns of the candidates (all, or ``which``) at kappa number
        ``ki``, weighted for relative error."""
        if which is None and ki in self._roof_cache:
            return self._roof_cache[ki]
        sh = self.shapes if which is None else self.shapes[which]
        t, p, sg, g, q = (sh[:, i:i + 1] for i in range(5))
        if which is None:
            if self._inner is None:  # the device roofline does not depend on kappa: once
                self._inner = roofline(self.gu[None, :], self.gm[None, :], t, p, sg)
            inner = self._inner
        else:
            inner = roofline(self.gu[None, :], self.gm[None, :], t, p, sg)
        r = _host_device_max(inner * (1.0 + self.kappas[ki] * self.gl[None, :]), self.gc[None, :], g, q)
        cols = np.stack([r, r * self.gl[None, :]] if self.lm else [r], axis=2) / self.yn[None, :, None]
        if which is None:
            self._roof_cache[ki] = cols
        return cols

    def solve(self, lin_cols: list[int]) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(coefficients (1, k), roofline row (1, ROOF_WIDTH), kappa, leave-one-out error)."""
        from scipy.optimize import nnls

        lin = self.keys[:, lin_cols] / self.yn[:, None]
        k = self.n_roof + len(lin_cols)
        if len(self.keys) <= k:
            raise ValueError(f"an end-to-end fit needs runs at more than {k} distinct points, got {len(self.keys)}")
        ranked: list[tuple[float, int, int]] = []  # (training error, kappa, shape): best over every kappa
        nr, n = self.n_roof, len(self.med)
        for ki in range(len(self.kappas)):
            roof = self.roof_columns(ki)  # (C, G, nr); the design is [roof, lin], targets all 1
            rt = roof.transpose(0, 2, 1)
            gram = np.empty((len(roof), k, k))
            gram[:, :nr, :nr] = np.matmul(rt, roof)
            gram[:, :nr, nr:] = np.matmul(rt, lin)
            gram[:, nr:, :nr] = gram[:, :nr, nr:].transpose(0, 2, 1)
            gram[:, nr:, nr:] = lin.T @ lin
            rhs = np.concatenate([roof.sum(axis=1), np.broadcast_to(lin.sum(axis=0), (len(roof), k - nr))], axis=1)
            sol = np.clip(np.linalg.solve(gram + 1e-9 * np.eye(k), rhs[..., None])[..., 0], 0, None)
            sse = np.einsum("ci,cij,cj->c", sol, gram, sol) - 2 * (sol * rhs).sum(axis=1) + n
            top = np.argpartition(sse, min(CV_SHORTLIST, len(sse) - 1))[:CV_SHORTLIST]
            ranked = sorted([*ranked, *((float(sse[c]), ki, int(c)) for c in top)])[:CV_SHORTLIST]
        best, best_cv = None, np.inf
        for _, ki, c in ranked:
            xw = np.concatenate([self.roof_columns(ki, np.array([c]))[0], lin], axis=1)
            cv = 0.0
            for out in range(n):
                keep = np.arange(n) != out
                coef, _ = nnls(xw[keep], np.ones(n - 1))
                cv += float((xw[out] @ coef - 1.0) ** 2)
            if cv < best_cv:
                best, best_cv = (ki, c, xw), cv
        ki, c, xw = best
        coef = _robust_nnls(xw * self.yn[:, None], self.med)
        full = np.zeros(self.kf)
        full[lin_cols] = coef[self.n_roof:]
        t, p, sg, g, q = (float(v) for v in self.shapes[c])
        amp_ctx = coef[1] if self.lm else 0.0
        row = np.array([[coef[0], amp_ctx, t, p, sg, g, q]])
        return full[None, :], row, float(self.kappas[ki]), best_cv


def _whole_shapes() -> np.ndarray:
    """Every (theta, p, sigma, gamma, q) a whole-model fit tries, (C, 5)."""
    shapes = [(t, p, sg, g, q) for g in GAMMA_CANDIDATES for q in (Q_CANDIDATES if g > 0 else (1.0,))
              for t in THETA_CANDIDATES for p in P_CANDIDATES for sg in SIGMA_CANDIDATES]
    return np.array(shapes)
