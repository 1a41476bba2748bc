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

from estimator.fit import domain_design, fit_columns
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
    gpu_hz: list[int]  # [] on a board without a GPU: no GPU axis
    cpu_ref_khz: float
    gpu_ref_hz: float | None = None  # None without a GPU
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

    @property
    def domains(self) -> list[str]:
        """The frequency domains this estimator varies, in order: ``["cpu", "gpu"]`` or ``["cpu"]``."""
        return ["cpu", "gpu"] if self.gpu_hz else ["cpu"]

    @property
    def tables(self) -> list[list[int]]:
        """Each domain's frequency table, in ``domains`` order."""
        return [self.cpu_khz, self.gpu_hz] if self.gpu_hz else [self.cpu_khz]

    @property
    def refs(self) -> list[float]:
        return [self.cpu_ref_khz, self.gpu_ref_hz] if self.gpu_hz else [self.cpu_ref_khz]

    def problems(self) -> list[str]:
        """What makes this file unusable, each naming its field: shapes that disagree, NaN or
        infinite numbers, negative times, unsorted tables. Checked on load, because a NaN
        coefficient makes every prediction NaN (the governor then picks the slowest pair) and a
        ragged array fails only at the first frame."""
        out: list[str] = []
        tables = {"cpu_khz": self.cpu_khz, "gpu_hz": self.gpu_hz}
        if not self.cpu_khz:
            out.append("field 'cpu_khz': empty frequency table")
        for name, table in tables.items():  # an empty gpu_hz: a board without a GPU
            if any(f <= 0 for f in table) or any(b <= a for a, b in zip(table, table[1:], strict=False)):
                out.append(f"field '{name}': frequencies must be positive and strictly increasing")
        refs = ("cpu_ref_khz", "gpu_ref_hz", "context_scale") if self.gpu_hz else ("cpu_ref_khz", "context_scale")
        for name in refs:
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
        k = len(self.domains) + 1  # columns of estimator.fit.domain_design()
        if self.context_scale is not None:
            k *= 2
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
    """Latency and its breakdown in ms at one pair (scalars) or over a grid (arrays).

    ``gpu_hz`` is None for a board without a GPU: its rows then carry no GPU frequency and no GPU
    busy time (``gpu_busy_ms`` stays an array of zeros here so the energy model needs no branch)."""

    cpu_khz: np.ndarray
    gpu_hz: np.ndarray | None
    latency_ms: np.ndarray
    host_busy_ms: np.ndarray
    gpu_busy_ms: np.ndarray
    overlap_ms: np.ndarray
    bubble_ms: np.ndarray
    host_wait_ms: np.ndarray

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per point. Without a GPU the rows carry only the CPU frequency, latency and
        host busy time: the device-side quantities (GPU frequency and busy time, overlap,
        bubbles, host waiting for the device) do not exist on such a board."""
        keys = ["cpu_khz", "gpu_hz", "latency_ms", "host_busy_ms", "gpu_busy_ms", "overlap_ms",
                "bubble_ms", "host_wait_ms"]
        if self.gpu_hz is None:
            keys = ["cpu_khz", "latency_ms", "host_busy_ms"]
        columns = {k: np.ravel(getattr(self, k)) for k in keys}
        return [
            {k: int(v[i]) if k.endswith("hz") else round(float(v[i]), 4) for k, v in columns.items()}
            for i in range(np.size(self.cpu_khz))
        ]


def _pooled_fit(x: np.ndarray, observed: np.ndarray, sparse: str, n_domains: int) -> np.ndarray:
    """One fit for segments never observed on their own: the per-run median over the layers
    where it was observed (coefficients of 0 where it never was)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runs where nothing was observed
        per_run = np.nanmedian(observed, axis=1)
    return np.nan_to_num(fit_columns(x, per_run[:, None], sparse=sparse, n_domains=n_domains)[0])


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
        tables = profile.frequencies.domains  # the domains present, CPU first
        nd = len(tables)
        refs = [float(max(t)) for t in tables.values()]
        run_freqs = [seg.cpu_khz, seg.gpu_hz][:nd]
        lm = profile.is_language_model
        contexts = sorted({int(c) for c in seg.context_len}) if lm else []
        if lm and len(contexts) < 2:
            raise ValueError(
                "a language-model profile needs runs at >= 2 distinct context_len values to fit "
                f"the context dependence; got {contexts}"
            )
        context_scale = float(max(contexts)) if lm else None
        x = domain_design(run_freqs, refs, seg.context_len, context_scale)
        busy_obs = np.where(seg.device_idle & seg.is_gpu[None, :], np.nan, seg.host)
        idle_obs = np.where(seg.device_idle & seg.is_gpu[None, :], seg.host, np.nan)
        host = fit_columns(x, busy_obs, sparse="cpu", n_domains=nd)
        host_idle = fit_columns(x, idle_obs, sparse="cpu", n_domains=nd)
        # a launch seen in one device state only takes that state's cost for the other; one never
        # seen (a full queue always hid it) takes the launches' pooled cost
        host = np.where(np.isnan(host), host_idle, host)
        host_idle = np.where(np.isnan(host_idle), host, host_idle)
        hidden = np.isnan(host).any(axis=1)
        if hidden.any():
            pooled_launch = _pooled_fit(x, np.where(seg.is_gpu[None, :], seg.host, np.nan), "cpu", nd)
            host[hidden] = pooled_launch
            host_idle[hidden] = pooled_launch
        host_idle[~seg.is_gpu] = host[~seg.is_gpu]
        two_states = not np.allclose(host, host_idle)
        exe = fit_columns(x, np.where(seg.is_gpu[None, :], seg.exec, np.nan), n_domains=nd)
        observed = np.where(seg.is_gpu[None, :], seg.dispatch, np.nan)
        dispatch = fit_columns(x, observed, n_domains=nd)
        # A kernel that always queued behind earlier work never showed its dispatch delay:
        # use the delay pooled over every kernel where it was seen (0 if never seen).
        unseen = np.isnan(dispatch).any(axis=1)
        dispatch[unseen] = _pooled_fit(x, observed, "constant", nd)
        dispatch[~seg.is_gpu] = 0.0
        exe[~seg.is_gpu] = 0.0
        tail = fit_columns(x, seg.tail[:, None], n_domains=nd)[0]
        points = sorted({tuple(int(v) for v in p) for p in zip(*run_freqs, strict=True)})
        data = EstimatorFile(
            model=profile.model,
            device=profile.device,
            cpu_khz=profile.frequencies.cpu_khz,
            gpu_hz=profile.frequencies.gpu_hz,
            cpu_ref_khz=refs[0],
            gpu_ref_hz=refs[1] if nd > 1 else None,
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
        fitted = est.latency_ms(seg.cpu_khz, seg.gpu_hz if nd > 1 else None, seg.context_len if lm else None)
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

    @property
    def domains(self) -> list[str]:
        return self.data.domains

    @cached_property
    def grid_points(self) -> np.ndarray:
        """Every combination of the domains' frequency tables, (points, domains), CPU-major."""
        mesh = np.meshgrid(*self.data.tables, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1).astype(float)

    @cached_property
    def grid_pairs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Every (cpu_khz, gpu_hz) of the frequency tables, CPU-major; gpu None without a GPU."""
        pts = self.grid_points
        return pts[:, 0], (pts[:, 1] if pts.shape[1] > 1 else None)

    def _freqs(self, cpu_khz, gpu_hz) -> list[np.ndarray]:
        """The frequencies per domain, broadcast together; refuses a GPU value the board lacks."""
        d = self.data
        if gpu_hz is None and d.gpu_hz:
            raise ValueError(f"model {d.model!r} was profiled with a GPU: give a GPU frequency")
        if gpu_hz is not None and not d.gpu_hz:
            raise ValueError(f"model {d.model!r} was profiled on a board without a GPU: give no GPU frequency")
        values = [cpu_khz] if gpu_hz is None else [cpu_khz, gpu_hz]
        return list(np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=float)) for v in values)))

    def _features(self, freqs: list[np.ndarray], context_len) -> np.ndarray:
        d = self.data
        if self.is_language_model:
            if context_len is None:
                raise ValueError(f"model {d.model!r} is a language model: give a context_len")
            context_len = np.broadcast_to(np.asarray(context_len, dtype=float), freqs[0].shape)
        return domain_design(freqs, d.refs, context_len, d.context_scale)

    def _segments_at(
        self, cpu_khz: np.ndarray, gpu_hz: np.ndarray | None, context_len: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        xt = self._features(self._freqs(cpu_khz, gpu_hz), context_len).T  # (k, G)
        return self._host @ xt, self._dispatch @ xt, self._exec @ xt, self._tail @ xt

    def breakdown(
        self,
        cpu_khz: float | np.ndarray,
        gpu_hz: float | np.ndarray | None = None,
        context_len: float | np.ndarray | None = None,
        with_overlap: bool = True,
        host_scale: float = 1.0,
    ) -> Estimate:
        """``gpu_hz`` is None exactly when the estimator has no GPU domain. ``host_scale``
        stretches every host segment (launches, host operators, sync), e.g. to ask what latency
        would be if other load slowed the inference thread."""
        freqs = self._freqs(cpu_khz, gpu_hz)
        xt = self._features(freqs, context_len).T  # (k, G)
        host, disp, exe, tail = self._host @ xt, self._dispatch @ xt, self._exec @ xt, self._tail @ xt
        host_idle = self._host_idle @ xt if self._host_idle is not None else None
        if host_scale != 1.0:
            host, tail = host * host_scale, tail * host_scale
            host_idle = host_idle * host_scale if host_idle is not None else None
        b: Breakdown = simulate_pipeline(self.is_gpu, host, disp, exe, tail, with_overlap,
                                         self.data.queue_depth, host_idle)
        ms = 1e-6
        return Estimate(
            cpu_khz=freqs[0], gpu_hz=freqs[1] if len(freqs) > 1 else None,
            latency_ms=b.latency * ms, host_busy_ms=b.host_busy * ms,
            gpu_busy_ms=b.gpu_busy * ms, overlap_ms=b.overlap * ms, bubble_ms=b.bubble * ms,
            host_wait_ms=b.host_wait * ms,
        )

    def timeline(self, cpu_khz: float, gpu_hz: float, context_len: float | None = None) -> dict:
        """The predicted run at one pair, layer by layer, in the profile format's terms (ns from the
        run's start): what the recursion replays, to set beside a measured run."""
        c = np.atleast_1d(np.asarray(cpu_khz, dtype=float))
        g = np.atleast_1d(np.asarray(gpu_hz, dtype=float))
        host, disp, exe, tail = self._segments_at(c, g, context_len)
        host_idle = None
        if self._host_idle is not None:
            host_idle = self._host_idle @ self._features(c, g, context_len).T
        steps: list = []
        b = simulate_pipeline(self.is_gpu, host, disp, exe, tail, False, self.data.queue_depth, host_idle, steps)
        layers = []
        for name, gpu, (h0, h1, d0, d1) in zip(self.data.layer_names, self.is_gpu, steps, strict=True):
            layer = {"name": name, "kind": "gpu" if gpu else "cpu", "cpu_start_ns": int(round(h0[0])),
                     "cpu_end_ns": int(round(h1[0]))}
            if gpu:
                layer |= {"gpu_start_ns": int(round(d0[0])), "gpu_end_ns": int(round(d1[0]))}
            layers.append(layer)
        return {"cpu_khz": int(cpu_khz), "gpu_hz": int(gpu_hz), "context_len": context_len,
                "latency_ns": int(round(b.latency[0])), "layers": layers}

    def latency_ms(
        self,
        cpu_khz: float | np.ndarray,
        gpu_hz: float | np.ndarray | None = None,
        context_len: float | np.ndarray | None = None,
    ) -> np.ndarray:
        return self.breakdown(cpu_khz, gpu_hz, context_len, with_overlap=False).latency_ms

    def grid(self, context_len: float | None = None, with_overlap: bool = True,
             host_scale: float = 1.0) -> Estimate:
        """The estimate at every point of the frequency tables (CPU-major order)."""
        c, g = self.grid_pairs
        return self.breakdown(c, g, context_len, with_overlap, host_scale)
