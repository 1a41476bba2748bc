"""Per-segment frequency-scaling fits.

Every segment time is modelled as a non-negative combination of

    t = a_c * (f_cpu_ref / f_cpu) + a_g * (f_gpu_ref / f_gpu) + b
        [ + L * (a_c' * f_cpu_ref / f_cpu + a_g' * f_gpu_ref / f_gpu + b') ]   (language models)

On a board with fewer domains (CPU-only inference) the missing domain's terms are simply absent:
one ``a * f_ref / f`` term per frequency domain the board has, in the board's domain order.

The ``1/f`` terms are the cycle-bound parts, ``b`` is the part bound elsewhere (memory, driver,
interrupt latency) and ``L`` is the context length, so attention that grows with the KV cache is
captured. One mechanism serves every segment: a host launch ends up with mostly ``a_c``, a
compute-bound kernel with ``a_g``, a memory-bound kernel with ``b``; nothing is hard-wired.

The fit is robust by construction: repeats at a point are reduced to their median (one outlier in
three is ignored), the least-squares problem is weighted for *relative* error (we care about
percentages), solved with non-negative least squares, and re-weighted with Huber weights so an
outlying point is down-weighted instead of bending the curve.
"""

from __future__ import annotations

import numpy as np

CPU_COL = 0  # the f_cpu_ref / f_cpu column of design()
HUBER_K = 1.5  # in units of the robust residual scale
IRLS_ITERATIONS = 4
MIN_TIME_NS = 1.0


def domain_design(
    freqs: list[np.ndarray],
    refs: list[float],
    context_len: np.ndarray | None,
    context_scale: float | None,
) -> np.ndarray:
    """Feature matrix (N, D + 1) or (N, 2 (D + 1)) over D frequency domains, in their order:
    one ``ref / f`` column per domain, then the constant, then the same times the context."""
    xs = [ref / np.asarray(f, dtype=float) for f, ref in zip(freqs, refs, strict=True)]
    cols = [*xs, np.ones_like(xs[0])]
    if context_scale is not None:
        ell = np.asarray(context_len, dtype=float) / context_scale
        cols += [ell * c for c in cols]
    return np.stack(cols, axis=1)


def design(
    cpu_khz: np.ndarray,
    gpu_hz: np.ndarray,
    context_len: np.ndarray | None,
    cpu_ref_khz: float,
    gpu_ref_hz: float,
    context_scale: float | None,
) -> np.ndarray:
    """Feature matrix (N, 3) or (N, 6) for a CPU + GPU board (see ``domain_design``)."""
    return domain_design([cpu_khz, gpu_hz], [cpu_ref_khz, gpu_ref_hz], context_len, context_scale)


def _robust_nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative-error NNLS with Huber re-weighting; x (n, k), y (n,) -> coefficients (k,)."""
    # Imported here: only fitting needs scipy, and importing scipy.optimize is most of the CLI's and
    # the daemon's start-up time (seconds on a small board, tens of seconds in an emulated guest).
    from scipy.optimize import nnls

    scale = np.maximum(y, MIN_TIME_NS)
    weights = 1.0 / scale
    coef = np.zeros(x.shape[1])
    for _ in range(IRLS_ITERATIONS):
        coef, _ = nnls(x * weights[:, None], y * weights)
        rel = (x @ coef - y) / scale
        mad = np.median(np.abs(rel - np.median(rel))) * 1.4826
        if mad <= 1e-9:
            break
        cutoff = HUBER_K * mad
        huber = np.where(np.abs(rel) <= cutoff, 1.0, cutoff / np.maximum(np.abs(rel), 1e-12))
        weights = np.sqrt(huber) / scale
    return coef


def fit_columns(features: np.ndarray, y: np.ndarray, sparse: str = "constant",
                n_domains: int = 2) -> np.ndarray:
    """Fit every column of ``y`` (runs, segments); NaN marks an unobserved value.

    Returns coefficients (segments, k). A column observed at too few distinct points to identify
    the full model falls back to one term: its median as a constant (``sparse="constant"``) or
    pure CPU-frequency scaling (``sparse="cpu"``, for host work seen only at some pairs); a column
    never observed gets NaN coefficients so the caller can substitute a pooled fit.
    """
    y = np.atleast_2d(y.T).T if y.ndim == 1 else y
    keys, group = np.unique(features, axis=0, return_inverse=True)
    group = group.ravel()
    k = features.shape[1]
    const_col = n_domains  # the `b` column of domain_design()
    out = np.full((y.shape[1], k), np.nan)
    for s in range(y.shape[1]):
        col = y[:, s]
        seen = ~np.isnan(col)
        if not seen.any():
            continue
        groups = np.unique(group[seen])
        med = np.array([np.median(col[seen & (group == g)]) for g in groups])
        if len(groups) <= k:
            coef = np.zeros(k)
            if sparse == "cpu":
                coef[CPU_COL] = max(float(np.median(med / keys[groups, CPU_COL])), 0.0)
            else:
                coef[const_col] = max(float(np.median(med)), 0.0)
        else:
            coef = _robust_nnls(keys[groups], med)
        out[s] = coef
    return out
