"""The fitted estimator: fit from a profile, save as versioned JSON, evaluate at a pair or a grid.

Pure computation: serialisation goes through pydantic (``EstimatorFile``) and the caller decides
where the bytes live.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from estimator.fit import design, fit_columns
from estimator.profile import Profile
from estimator.recursion import Breakdown, simulate_pipeline
from estimator.segments import extract_segments

ESTIMATOR_FORMAT = "deadline-dvfs.estimator/1"


class EstimatorFile(BaseModel):
    """What `dvfs-gov fit` writes and the governor loads. Coefficients are ns."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(ESTIMATOR_FORMAT, pattern=r"^deadline-dvfs\.estimator/1$")
    model: str
    device: str
    cpu_khz: list[int]
    gpu_hz: list[int]
    cpu_ref_khz: float
    gpu_ref_hz: float
    context_scale: float | None = None
    profiled_context_len: list[int] = []
    layer_names: list[str]
    layer_is_gpu: list[bool]
    host: list[list[float]]
    host_idle: list[list[float]] | None = None  # launch cost when the device was idle, if it differs
    dispatch: list[list[float]]
    exec: list[list[float]]
    tail: list[float]
    queue_depth: int | None = None
    training: dict[str, float | int | list[list[int]]] = {}

    def problems(self) -> list[str]:
        """What makes this file unusable, each naming its field: shapes that disagree, NaN or
        infinite numbers, negative times, unsorted tables. Checked on load, because a NaN
        coefficient makes every prediction NaN (the governor then picks the slowest pair) and a
        ragged array fails only at the first frame."""
        out: list[str] = []
        for name in ("cpu_khz", "gpu_hz"):
            table = getattr(self, name)
            if not table:
                out.append(f"field '{name}': empty frequency table")
            elif any(f <= 0 for f in table) or any(b <= a for a, b in zip(table, table[1:], strict=False)):
                out.append(f"field '{name}': frequencies must be positive and strictly increasing")
        for name in ("cpu_ref_khz", "gpu_ref_hz", "context_scale"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                out.append(f"field '{name}': must be a positive finite number, got {v!r}")
        if self.queue_depth is not None and self.queue_depth < 1:
            out.append(f"field 'queue_depth': must be >= 1, got {self.queue_depth}")
        if any(c < 0 for c in self.profiled_context_len):
            out.append("field 'profiled_context_len': context lengths cannot be negative")
        layers = len(self.layer_names)
        if layers == 0:
            out.append("field 'layer_names': no layers")
        k = 3 if self.context_scale is None else 6  # columns of estimator.fit.design()
        if len(self.layer_is_gpu) != layers:
            out.append(f"field 'layer_is_gpu': {len(self.layer_is_gpu)} entries for {layers} layers")
        arrays = {"host": self.host, "dispatch": self.dispatch, "exec": self.exec}
        if self.host_idle is not None:
            arrays["host_idle"] = self.host_idle
        for name, rows in arrays.items():
            if len(rows) != layers:
                out.append(f"field '{name}': {len(rows)} rows for {layers} layers")
            for i, row in enumerate(rows):
                if len(row) != k:
                    out.append(f"field '{name}[{i}]': {len(row)} coefficients, expected {k}")
                    break
        if len(self.tail) != k:
            out.append(f"field 'tail': {len(self.tail)} coefficients, expected {k}")
        for name, rows in [*arrays.items(), ("tail", [self.tail])]:
            for i, row in enumerate(rows):
                bad = [j for j, v in enumerate(row) if not math.isfinite(v) or v < 0]
                if bad:
                    where = name if name == "tail" else f"{name}[{i}]"
                    v = row[bad[0]]
                    what = "negative time" if math.isfinite(v) else "not a finite number"
                    out.append(f"field '{where}[{bad[0]}]': {what} ({v!r}); coefficients are ns >= 0")
                    break
        return out


@dataclass(frozen=True)
class Estimate:
    """Latency and its breakdown in ms at one pair (scalars) or over a grid (arrays)."""

    cpu_khz: np.ndarray
    gpu_hz: np.ndarray
    latency_ms: np.ndarray
    host_busy_ms: np.ndarray
    gpu_busy_ms: np.ndarray
    overlap_ms: np.ndarray
    bubble_ms: np.ndarray
    host_wait_ms: np.ndarray

    def rows(self) -> list[dict[str, float | int]]:
        return [
            {
                "cpu_khz": int(c),
                "gpu_hz": int(g),
                "latency_ms": round(float(lat), 4),
                "host_busy_ms": round(float(h), 4),
                "gpu_busy_ms": round(float(gb), 4),
                "overlap_ms": round(float(o), 4),
                "bubble_ms": round(float(b), 4),
                "host_wait_ms": round(float(w), 4),
            }
            for c, g, lat, h, gb, o, b, w in zip(
                np.ravel(self.cpu_khz), np.ravel(self.gpu_hz), np.ravel(self.latency_ms),
                np.ravel(self.host_busy_ms), np.ravel(self.gpu_busy_ms),
                np.ravel(self.overlap_ms), np.ravel(self.bubble_ms), np.ravel(self.host_wait_ms),
                strict=True,
            )
        ]


def _pooled_fit(x: np.ndarray, observed: np.ndarray, sparse: str) -> np.ndarray:
    """One fit for segments never observed on their own: the per-run median over the layers
    where it was observed (coefficients of 0 where it never was)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runs where nothing was observed
        per_run = np.nanmedian(observed, axis=1)
    return np.nan_to_num(fit_columns(x, per_run[:, None], sparse=sparse)[0])


class Estimator:
    """Latency model of one model on one device. Build with ``fit`` or ``from_file``."""

    def __init__(self, data: EstimatorFile) -> None:
        self.data = data
        self.is_gpu = np.array(data.layer_is_gpu, dtype=bool)
        self._host = np.array(data.host, dtype=float)
        self._host_idle = np.array(data.host_idle, dtype=float) if data.host_idle is not None else None
        self._dispatch = np.array(data.dispatch, dtype=float)
        self._exec = np.array(data.exec, dtype=float)
        self._tail = np.array(data.tail, dtype=float)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def fit(cls, profile: Profile) -> Estimator:
        seg = extract_segments(profile)
        cpu_ref = float(max(profile.frequencies.cpu_khz))
        gpu_ref = float(max(profile.frequencies.gpu_hz))
        lm = profile.is_language_model
        contexts = sorted({int(c) for c in seg.context_len}) if lm else []
        if lm and len(contexts) < 2:
            raise ValueError(
                "a language-model profile needs runs at >= 2 distinct context_len values to fit "
                f"the context dependence; got {contexts}"
            )
        context_scale = float(max(contexts)) if lm else None
        x = design(seg.cpu_khz, seg.gpu_hz, seg.context_len, cpu_ref, gpu_ref, context_scale)
        busy_obs = np.where(seg.device_idle & seg.is_gpu[None, :], np.nan, seg.host)
        idle_obs = np.where(seg.device_idle & seg.is_gpu[None, :], seg.host, np.nan)
        host = fit_columns(x, busy_obs, sparse="cpu")
        host_idle = fit_columns(x, idle_obs, sparse="cpu")
        # a launch seen in one device state only takes that state's cost for the other; one never
        # seen (a full queue always hid it) takes the launches' pooled cost
        host = np.where(np.isnan(host), host_idle, host)
        host_idle = np.where(np.isnan(host_idle), host, host_idle)
        hidden = np.isnan(host).any(axis=1)
        if hidden.any():
            pooled_launch = _pooled_fit(x, np.where(seg.is_gpu[None, :], seg.host, np.nan), "cpu")
            host[hidden] = pooled_launch
            host_idle[hidden] = pooled_launch
        host_idle[~seg.is_gpu] = host[~seg.is_gpu]
        two_states = not np.allclose(host, host_idle)
        exe = fit_columns(x, np.where(seg.is_gpu[None, :], seg.exec, np.nan))
        observed = np.where(seg.is_gpu[None, :], seg.dispatch, np.nan)
        dispatch = fit_columns(x, observed)
        # A kernel that always queued behind earlier work never showed its dispatch delay:
        # use the delay pooled over every kernel where it was seen (0 if never seen).
        unseen = np.isnan(dispatch).any(axis=1)
        dispatch[unseen] = _pooled_fit(x, observed, "constant")
        dispatch[~seg.is_gpu] = 0.0
        exe[~seg.is_gpu] = 0.0
        tail = fit_columns(x, seg.tail[:, None])[0]
        points = sorted({(int(c), int(g)) for c, g in zip(seg.cpu_khz, seg.gpu_hz, strict=True)})
        data = EstimatorFile(
            model=profile.model,
            device=profile.device,
            cpu_khz=profile.frequencies.cpu_khz,
            gpu_hz=profile.frequencies.gpu_hz,
            cpu_ref_khz=cpu_ref,
            gpu_ref_hz=gpu_ref,
            context_scale=context_scale,
            profiled_context_len=contexts,
            layer_names=[x.name for x in profile.runs[0].layers],
            layer_is_gpu=seg.is_gpu.tolist(),
            host=host.tolist(),
            host_idle=host_idle.tolist() if two_states else None,
            dispatch=dispatch.tolist(),
            exec=exe.tolist(),
            tail=tail.tolist(),
            queue_depth=seg.queue_depth,
            training={"runs": len(profile.runs), "points": [list(p) for p in points]},
        )
        est = cls(data)
        fitted = est.latency_ms(seg.cpu_khz, seg.gpu_hz, seg.context_len if lm else None)
        measured = np.array([r.latency_ns for r in profile.runs]) / 1e6
        data.training["fit_mape_pct"] = round(
            float(np.mean(np.abs(fitted - measured) / measured) * 100), 3
        )
        return est

    @classmethod
    def from_json(cls, text: str) -> Estimator:
        """Parse and check an estimator file; ValueError naming the first bad field."""
        data = EstimatorFile.model_validate_json(text)
        problems = data.problems()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(f"{problems[0]}{more}")
        return cls(data)

    def to_json(self) -> str:
        return self.data.model_dump_json(indent=1)

    # ---- evaluation ---------------------------------------------------------------------
    @property
    def is_language_model(self) -> bool:
        return self.data.context_scale is not None

    @cached_property
    def grid_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (cpu_khz, gpu_hz) of the frequency tables, CPU-major."""
        c, g = np.meshgrid(self.data.cpu_khz, self.data.gpu_hz, indexing="ij")
        return c.ravel().astype(float), g.ravel().astype(float)

    def _features(self, cpu_khz: np.ndarray, gpu_hz: np.ndarray, context_len) -> np.ndarray:
        d = self.data
        if self.is_language_model:
            if context_len is None:
                raise ValueError(f"model {d.model!r} is a language model: give a context_len")
            context_len = np.broadcast_to(np.asarray(context_len, dtype=float), cpu_khz.shape)
        return design(cpu_khz, gpu_hz, context_len, d.cpu_ref_khz, d.gpu_ref_hz, d.context_scale)

    def _segments_at(
        self, cpu_khz: np.ndarray, gpu_hz: np.ndarray, context_len: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        xt = self._features(cpu_khz, gpu_hz, context_len).T  # (k, G)
        return self._host @ xt, self._dispatch @ xt, self._exec @ xt, self._tail @ xt

    def breakdown(
        self,
        cpu_khz: float | np.ndarray,
        gpu_hz: float | np.ndarray,
        context_len: float | np.ndarray | None = None,
        with_overlap: bool = True,
        host_scale: float = 1.0,
    ) -> Estimate:
        """``host_scale`` stretches every host segment (launches, host operators, sync), e.g.
        to ask what latency would be if other load slowed the inference thread."""
        c = np.atleast_1d(np.asarray(cpu_khz, dtype=float))
        g = np.atleast_1d(np.asarray(gpu_hz, dtype=float))
        c, g = np.broadcast_arrays(c, g)
        host, disp, exe, tail = self._segments_at(c, g, context_len)
        host_idle = None
        if self._host_idle is not None:
            host_idle = self._host_idle @ self._features(c, g, context_len).T
        if host_scale != 1.0:
            host, tail = host * host_scale, tail * host_scale
            host_idle = host_idle * host_scale if host_idle is not None else None
        b: Breakdown = simulate_pipeline(self.is_gpu, host, disp, exe, tail, with_overlap,
                                         self.data.queue_depth, host_idle)
        ms = 1e-6
        return Estimate(
            cpu_khz=c, gpu_hz=g, latency_ms=b.latency * ms, host_busy_ms=b.host_busy * ms,
            gpu_busy_ms=b.gpu_busy * ms, overlap_ms=b.overlap * ms, bubble_ms=b.bubble * ms,
            host_wait_ms=b.host_wait * ms,
        )

    def latency_ms(
        self,
        cpu_khz: float | np.ndarray,
        gpu_hz: float | np.ndarray,
        context_len: float | np.ndarray | None = None,
    ) -> np.ndarray:
        return self.breakdown(cpu_khz, gpu_hz, context_len, with_overlap=False).latency_ms

    def grid(self, context_len: float | None = None, with_overlap: bool = True,
             host_scale: float = 1.0) -> Estimate:
        """The estimate at every pair of the frequency tables (CPU-major order)."""
        c, g = self.grid_pairs
        return self.breakdown(c, g, context_len, with_overlap, host_scale)
