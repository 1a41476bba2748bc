"""The fitted estimator: fit from a profile, save as versioned JSON, evaluate at a pair or a grid.

Pure computation: serialisation goes through pydantic (``EstimatorFile``) and the caller decides
where the bytes live.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dvfs_schema.domains import DOMAIN_ORDER, DomainName
from estimator.fit import domain_design, fit_columns
from estimator.profile import Profile
from estimator.recursion import Breakdown, simulate_pipeline
from estimator.repeat_noise import RepeatNoise, repeat_noise
from estimator.roofline import ROOF_WIDTH, fit_roofline_columns, fit_whole_model, roofline, roofline_term
from estimator.segments import extract_segments

ESTIMATOR_FORMAT = "deadline-dvfs.estimator/2"
# /1: two domains as the fields cpu_khz/gpu_hz (and their refs); still read, converted on load
ACCEPTED_FORMATS = r"^deadline-dvfs\.estimator/[12]$"


class FrequencyDomain(BaseModel):
    """One frequency domain of the estimator's grid: its table (the kernel's unit) and the reference
    frequency the fitted ``ref / f`` features are relative to."""

    model_config = ConfigDict(extra="forbid")

    name: DomainName
    table: list[int]
    ref: float


class EstimatorFile(BaseModel):
    """What `dvfs-gov fit` writes and the governor loads. Coefficients are ns.

    ``frequency_domains`` lists the domains in grid order (CPU, then GPU, then memory where
    profiled). Each segment row holds one coefficient per column of estimator.fit.domain_design
    (one ``ref / f`` per domain, then the constant, then the same times the context). With a memory
    domain, the ``*_roofline`` rows add each segment's roofline term (estimator.roofline:
    amplitude, amplitude per context, theta, p, sigma, gamma, q) over its own clock and the memory clock: the GPU for
    ``exec``, the CPU for ``host``/``host_idle``/``tail``, and for an end-to-end profile's whole-model
    ``tail`` the GPU where there is one (``tail_roofline_domain``). An end-to-end estimator has no
    layers: its ``tail`` is the whole inference."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(ESTIMATOR_FORMAT, pattern=ACCEPTED_FORMATS)
    model: str
    device: str
    frequency_domains: list[FrequencyDomain] = Field(min_length=1)
    context_scale: float | None = None
    profiled_context_len: list[int] = []
    end_to_end: bool = False
    layer_names: list[str]
    layer_is_gpu: list[bool]
    host: list[list[float]]
    host_idle: list[list[float]] | None = None  # launch cost when the device was idle, if it differs
    dispatch: list[list[float]]
    exec: list[list[float]]
    tail: list[float]
    host_roofline: list[list[float]] | None = None
    host_idle_roofline: list[list[float]] | None = None
    exec_roofline: list[list[float]] | None = None
    tail_roofline: list[float] | None = None
    tail_roofline_domain: Literal["cpu", "gpu"] = "cpu"
    # end-to-end language models: the device side's growth per normalised context inside the
    # whole-model maximum (estimator.roofline.roofline's device_scale = 1 + this * ell)
    tail_device_context: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    queue_depth: int | None = None
    training: dict[str, float | int | list[list[int]]] = {}
    # the spread of the profile's repeats at one point: the governor's noise margin until it has
    # measured enough frames (absent in files fitted before it, or from a profile without repeats)
    repeat_noise: RepeatNoise | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_two_domain_file(cls, data: Any) -> Any:
        """Files of format /1 name the CPU and GPU tables as fields; read them as domains."""
        if not isinstance(data, dict) or "frequency_domains" in data or "cpu_khz" not in data:
            return data
        data = dict(data)
        domains = [{"name": "cpu", "table": data.pop("cpu_khz"), "ref": data.pop("cpu_ref_khz", None)}]
        gpu, gpu_ref = data.pop("gpu_hz", []), data.pop("gpu_ref_hz", None)
        if gpu:
            domains.append({"name": "gpu", "table": gpu, "ref": gpu_ref})
        data["frequency_domains"] = domains
        return data

    @property
    def domains(self) -> list[str]:
        """The frequency domains this estimator varies, in order (e.g. ``["cpu", "gpu", "mem"]``)."""
        return [d.name for d in self.frequency_domains]

    @property
    def tables(self) -> list[list[int]]:
        """Each domain's frequency table, in ``domains`` order."""
        return [d.table for d in self.frequency_domains]

    @property
    def refs(self) -> list[float]:
        return [d.ref for d in self.frequency_domains]

    def _table(self, name: str) -> list[int]:
        return next((d.table for d in self.frequency_domains if d.name == name), [])

    def _ref(self, name: str) -> float | None:
        return next((d.ref for d in self.frequency_domains if d.name == name), None)

    cpu_khz = property(lambda self: self._table("cpu"))
    gpu_hz = property(lambda self: self._table("gpu"))  # [] without a GPU
    mem_hz = property(lambda self: self._table("mem"))  # [] without a memory domain
    cpu_ref_khz = property(lambda self: self._ref("cpu"))
    gpu_ref_hz = property(lambda self: self._ref("gpu"))
    mem_ref_hz = property(lambda self: self._ref("mem"))

    def problems(self) -> list[str]:
        """What makes this file unusable, each naming its field: shapes that disagree, NaN or
        infinite numbers, negative times, unsorted tables. Checked on load, because a NaN
        coefficient makes every prediction NaN (the governor then picks the slowest pair) and a
        ragged array fails only at the first frame."""
        out: list[str] = []
        names = self.domains
        if names[0] != "cpu" or names != [n for n in DOMAIN_ORDER if n in names]:
            out.append(f"field 'frequency_domains': domains must be cpu, then gpu, then mem "
                       f"(those present), got {names}")
        for i, d in enumerate(self.frequency_domains):
            table = d.table
            where = f"frequency_domains[{i}] ({d.name})"
            if not table:
                out.append(f"field '{where}.table': empty frequency table")
            if any(f <= 0 for f in table) or any(b <= a for a, b in zip(table, table[1:], strict=False)):
                out.append(f"field '{where}.table': frequencies must be positive and strictly increasing")
            if d.ref is None or not (math.isfinite(d.ref) and d.ref > 0):
                out.append(f"field '{where}.ref': must be a positive finite number, got {d.ref!r}")
        if self.context_scale is not None and not (math.isfinite(self.context_scale) and self.context_scale > 0):
            out.append(f"field 'context_scale': must be a positive finite number, got {self.context_scale!r}")
        if self.queue_depth is not None and self.queue_depth < 1:
            out.append(f"field 'queue_depth': must be >= 1, got {self.queue_depth}")
        if any(c < 0 for c in self.profiled_context_len):
            out.append("field 'profiled_context_len': context lengths cannot be negative")
        layers = len(self.layer_names)
        if layers == 0 and not self.end_to_end:
            out.append("field 'layer_names': no layers")
        if layers and self.end_to_end:
            out.append("field 'layer_names': an end-to-end estimator has no layers")
        k = len(self.domains) + 1  # columns of estimator.fit.domain_design()
        if self.context_scale is not None:
            k *= 2
        if len(self.layer_is_gpu) != layers:
            out.append(f"field 'layer_is_gpu': {len(self.layer_is_gpu)} entries for {layers} layers")
        arrays = {"host": self.host, "dispatch": self.dispatch, "exec": self.exec}
        if self.host_idle is not None:
            arrays["host_idle"] = self.host_idle
        widths = dict.fromkeys(arrays, k)
        for name in ("host_roofline", "host_idle_roofline", "exec_roofline"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
                widths[name] = ROOF_WIDTH
        if ("mem" in names) != (self.tail_roofline is not None):
            out.append("field 'tail_roofline': given exactly when a mem domain is")
        for name, rows in arrays.items():
            if len(rows) != layers:
                out.append(f"field '{name}': {len(rows)} rows for {layers} layers")
            for i, row in enumerate(rows):
                if len(row) != widths[name]:
                    out.append(f"field '{name}[{i}]': {len(row)} coefficients, expected {widths[name]}")
                    break
        if len(self.tail) != k:
            out.append(f"field 'tail': {len(self.tail)} coefficients, expected {k}")
        tails = [("tail", [self.tail])]
        if self.tail_roofline is not None:
            if len(self.tail_roofline) != ROOF_WIDTH:
                out.append(f"field 'tail_roofline': {len(self.tail_roofline)} numbers, expected {ROOF_WIDTH}")
            tails.append(("tail_roofline", [self.tail_roofline]))
        for name, rows in [*arrays.items(), *tails]:
            for i, row in enumerate(rows):
                bad = [j for j, v in enumerate(row) if not math.isfinite(v) or v < 0]
                if bad:
                    where = name if name.startswith("tail") else f"{name}[{i}]"
                    v = row[bad[0]]
                    what = "negative time" if math.isfinite(v) else "not a finite number"
                    out.append(f"field '{where}[{bad[0]}]': {what} ({v!r}); coefficients are ns >= 0")
                    break
                if name.endswith("roofline") and len(row) == ROOF_WIDTH and (row[3] < 1 or row[4] >= 1):
                    where = name if name.startswith("tail") else f"{name}[{i}]"
                    out.append(f"field '{where}': the roofline's p must be >= 1 and sigma < 1, got "
                               f"p {row[3]!r}, sigma {row[4]!r}")
                    break
        return out


@dataclass(frozen=True)
class Estimate:
    """Latency and its breakdown in ms at one point (scalars) or over a grid (arrays).

    ``gpu_hz`` is None for a board without a GPU: its rows then carry no GPU frequency and no GPU
    busy time (``gpu_busy_ms`` stays an array of zeros here so the energy model needs no branch).
    ``mem_hz`` is None unless the estimator has a memory domain. ``measured_breakdown`` is False
    for an end-to-end estimator: its busy times are the fitted host and device parts of the
    whole-model fit, not replayed layers, and it cannot tell overlap apart (reported as 0)."""

    cpu_khz: np.ndarray
    gpu_hz: np.ndarray | None
    latency_ms: np.ndarray
    host_busy_ms: np.ndarray
    gpu_busy_ms: np.ndarray
    overlap_ms: np.ndarray
    bubble_ms: np.ndarray
    host_wait_ms: np.ndarray
    mem_hz: np.ndarray | None = None
    measured_breakdown: bool = True

    def freqs(self) -> dict[str, np.ndarray]:
        """The frequencies per domain present (``cpu``, ``gpu``, ``mem``), for the energy model."""
        out = {"cpu": self.cpu_khz, "gpu": self.gpu_hz, "mem": self.mem_hz}
        return {k: v for k, v in out.items() if v is not None}

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per point. Without a GPU the rows carry only the CPU frequency (and the
        memory level where there is one), latency and host busy time: the device-side quantities
        (GPU frequency and busy time, overlap, bubbles, host waiting for the device) do not exist
        on such a board. Rows carry ``mem_hz`` exactly when the estimator has a memory domain."""
        freq_keys = ["cpu_khz"] + (["gpu_hz"] if self.gpu_hz is not None else []) + (
            ["mem_hz"] if self.mem_hz is not None else [])
        keys = ["latency_ms", "host_busy_ms", "gpu_busy_ms", "overlap_ms", "bubble_ms", "host_wait_ms"]
        if self.gpu_hz is None:
            keys = ["latency_ms", "host_busy_ms"]
        columns = {k: np.ravel(getattr(self, k)) for k in freq_keys + keys}
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


def _lin(coef: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """``coef @ xt`` for the few columns of a design, without BLAS: its threads, woken for a
    product this small, cost milliseconds on a loaded board (measured: 0.2 ms single-threaded,
    20 ms with OpenBLAS's threads on two busy cores)."""
    xt = np.ascontiguousarray(xt)
    if coef.ndim == 1:
        return coef @ xt  # a vector: no thread pool involved
    out = coef[:, :1] * xt[0]
    for j in range(1, xt.shape[0]):
        if coef[:, j].any():  # columns no segment uses (the memory model's) cost nothing
            out += coef[:, j:j + 1] * xt[j]
    return out


NO_ROOF = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]  # a roofline row that adds nothing


class _SegmentFitter:
    """Fits segment columns over the profile's domains: linear ``ref / f`` terms over every domain
    (boards without a memory clock, estimator.fit), or each segment's roofline over its own clock
    and the memory clock plus its own clock and a constant (estimator.roofline) when the memory
    clock is profiled: with three domains and a handful of points, every domain's ``1/f`` term in
    every segment cannot be identified, and physics says which clocks a piece of work runs on."""

    def __init__(self, names: list[str], x: np.ndarray, xs: dict[str, np.ndarray],
                 ell: np.ndarray | None) -> None:
        self.names, self.x, self.xs, self.ell = names, x, xs, ell
        self.nd = len(names)
        self.memory = "mem" in names

    def lin_cols(self, *domains: str) -> list[int]:
        """Columns of domain_design for these domains' ``1/f`` terms and the constant (and the
        constant's context copy for a language model)."""
        cols = [self.names.index(d) for d in domains] + [self.nd]
        if self.ell is not None:
            cols.append(2 * self.nd + 1)
        return cols

    def fit(self, y: np.ndarray, own: str, sparse: str = "constant",
            linear: tuple[str, ...] | None = None, with_cpu: bool = False,
            ) -> tuple[np.ndarray, np.ndarray | None]:
        """(coefficients (segments, k), roofline rows or None without a memory domain). With
        ``with_cpu``: a whole-model fit (estimator.roofline.fit_whole_model), whose device-side
        context growth is left in ``self.kappa``."""
        self.kappa = 0.0
        if not self.memory:
            return fit_columns(self.x, y, sparse="cpu" if sparse == "own" else sparse, n_domains=self.nd), None
        cols = self.lin_cols(*(linear or (own,)))
        if with_cpu:  # with and without the own clock's linear term (see fit_whole_model)
            fewer = [c for c in cols if c != self.names.index(own)]
            fewest = [c for c in fewer if c != self.names.index("mem")]
            coef, roof, self.kappa = fit_whole_model(self.x, [fewest, fewer, cols], self.xs[own],
                                                     self.xs["mem"], self.ell, y[:, 0])
            return coef, roof
        return fit_roofline_columns(self.x, cols, self.xs[own], self.xs["mem"], self.ell, y, sparse)


class Estimator:
    """Latency model of one model on one device. Build with ``fit`` or ``from_file``."""

    def __init__(self, data: EstimatorFile) -> None:
        self.data = data
        self.is_gpu = np.array(data.layer_is_gpu, dtype=bool)
        k = (len(data.domains) + 1) * (2 if data.context_scale is not None else 1)
        self._host = np.array(data.host, dtype=float).reshape(-1, k)
        self._host_idle = np.array(data.host_idle, dtype=float).reshape(-1, k) if data.host_idle is not None else None
        self._dispatch = np.array(data.dispatch, dtype=float).reshape(-1, k)
        self._exec = np.array(data.exec, dtype=float).reshape(-1, k)
        self._tail = np.array(data.tail, dtype=float)

        def roof(rows):
            return None if rows is None else np.array(rows, dtype=float).reshape(-1, ROOF_WIDTH)

        self._host_roof = roof(data.host_roofline)
        self._host_idle_roof = roof(data.host_idle_roofline)
        self._exec_roof = roof(data.exec_roofline)
        self._tail_roof = roof([data.tail_roofline] if data.tail_roofline is not None else None)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def fit(cls, profile: Profile) -> Estimator:
        seg = extract_segments(profile)
        tables = profile.frequencies.domains  # the domains present: CPU, GPU, memory
        names = list(tables)
        refs = [float(max(t)) for t in tables.values()]
        run_freqs = seg.freqs(names)
        lm = profile.is_language_model
        contexts = sorted({int(c) for c in seg.context_len}) if lm else []
        if lm and len(contexts) < 2:
            raise ValueError(
                "a language-model profile needs runs at >= 2 distinct context_len values to fit "
                f"the context dependence; got {contexts}"
            )
        context_scale = float(max(contexts)) if lm else None
        x = domain_design(run_freqs, refs, seg.context_len, context_scale)
        xs = {n: ref / f for n, ref, f in zip(names, refs, run_freqs, strict=True)}
        fitter = _SegmentFitter(names, x, xs, seg.context_len / context_scale if lm else None)
        points = sorted({tuple(int(v) for v in p) for p in zip(*run_freqs, strict=True)})
        common = dict(
            model=profile.model, device=profile.device,
            frequency_domains=[FrequencyDomain(name=n, table=t, ref=r)
                               for (n, t), r in zip(tables.items(), refs, strict=True)],
            context_scale=context_scale, profiled_context_len=contexts,
            training={"runs": len(profile.runs), "points": [list(p) for p in points]},
            repeat_noise=repeat_noise(profile),
        )
        if profile.is_end_to_end:
            data = cls._fit_end_to_end(seg, fitter, common)
        else:
            data = cls._fit_layers(profile, seg, fitter, common)
        est = cls(data)
        by = dict(zip(names, run_freqs, strict=True))
        fitted = est.latency_ms(by["cpu"], by.get("gpu"), seg.context_len if lm else None, by.get("mem"))
        measured = np.array([r.latency_ns for r in profile.runs]) / 1e6
        data.training["fit_mape_pct"] = round(
            float(np.mean(np.abs(fitted - measured) / measured) * 100), 3
        )
        return est

    @staticmethod
    def _fit_end_to_end(seg, fitter: _SegmentFitter, common: dict) -> EstimatorFile:
        """The whole inference as one segment: without a memory clock, ``1/f`` terms over every
        domain and a constant; with one, the same roofline reasoning at model scale. With a GPU:
        a soft maximum of the host's launch stream (CPU), the kernels' compute (GPU) and their
        DRAM traffic (memory), since the host runs ahead of the device and the slowest of the
        three sets the pace; plus serial host work (host operators, synchronisation: the CPU's
        and the memory's ``1/f`` terms) and a constant. Without a GPU: the host roofline over
        CPU and memory plus a CPU term and a constant."""
        own = "gpu" if "gpu" in fitter.names else "cpu"
        linear = ("cpu", "gpu", "mem") if own == "gpu" else ("cpu",)
        coef, roof = fitter.fit(seg.tail[:, None], own, linear=linear, with_cpu=own == "gpu")
        return EstimatorFile(
            **common, end_to_end=True, layer_names=[], layer_is_gpu=[], host=[], dispatch=[], exec=[],
            tail=np.nan_to_num(coef[0]).tolist(),
            tail_roofline=np.nan_to_num(roof[0]).tolist() if roof is not None else None,
            tail_roofline_domain=own, tail_device_context=fitter.kappa,
        )

    @staticmethod
    def _fit_layers(profile: Profile, seg, fitter: _SegmentFitter, common: dict) -> EstimatorFile:
        nd = fitter.nd
        x = fitter.x
        memory = fitter.memory
        busy_obs = np.where(seg.device_idle & seg.is_gpu[None, :], np.nan, seg.host)
        idle_obs = np.where(seg.device_idle & seg.is_gpu[None, :], seg.host, np.nan)
        host, host_roof = fitter.fit(busy_obs, "cpu", sparse="own")
        host_idle, host_idle_roof = fitter.fit(idle_obs, "cpu", sparse="own")
        if not memory:
            host_roof = host_idle_roof = np.tile(NO_ROOF, (len(host), 1))
        # a launch seen in one device state only takes that state's cost for the other; one never
        # seen (a full queue always hid it) takes the launches' pooled cost
        only_idle = np.isnan(host).any(axis=1)
        host[only_idle], host_roof[only_idle] = host_idle[only_idle], host_idle_roof[only_idle]
        only_busy = np.isnan(host_idle).any(axis=1)
        host_idle[only_busy], host_idle_roof[only_busy] = host[only_busy], host_roof[only_busy]
        hidden = np.isnan(host).any(axis=1)
        if hidden.any():
            pooled_launch = _pooled_fit(x, np.where(seg.is_gpu[None, :], seg.host, np.nan), "cpu", nd)
            host[hidden] = host_idle[hidden] = pooled_launch
            host_roof[hidden] = host_idle_roof[hidden] = NO_ROOF
        host_idle[~seg.is_gpu] = host[~seg.is_gpu]
        host_idle_roof[~seg.is_gpu] = host_roof[~seg.is_gpu]
        two_states = not (np.allclose(host, host_idle) and np.allclose(host_roof, host_idle_roof))
        exec_obs = np.where(seg.is_gpu[None, :], seg.exec, np.nan)
        if "gpu" in fitter.names:
            exe, exe_roof = fitter.fit(exec_obs, "gpu")
        else:
            exe, exe_roof = np.full((len(host), x.shape[1]), np.nan), None
        if exe_roof is None:
            exe_roof = np.tile(NO_ROOF, (len(host), 1))
        observed = np.where(seg.is_gpu[None, :], seg.dispatch, np.nan)
        dispatch = fit_columns(x, observed, n_domains=nd)
        # A kernel that always queued behind earlier work never showed its dispatch delay:
        # use the delay pooled over every kernel where it was seen (0 if never seen).
        unseen = np.isnan(dispatch).any(axis=1)
        dispatch[unseen] = _pooled_fit(x, observed, "constant", nd)
        dispatch[~seg.is_gpu] = 0.0
        exe[~seg.is_gpu] = 0.0
        exe_roof[~seg.is_gpu] = NO_ROOF
        tail, tail_roof = fitter.fit(seg.tail[:, None], "cpu")
        return EstimatorFile(
            **common,
            layer_names=[x.name for x in profile.runs[0].layers],
            layer_is_gpu=seg.is_gpu.tolist(),
            host=host.tolist(),
            host_idle=host_idle.tolist() if two_states else None,
            dispatch=dispatch.tolist(),
            exec=exe.tolist(),
            tail=tail[0].tolist(),
            host_roofline=host_roof.tolist() if memory else None,
            host_idle_roofline=host_idle_roof.tolist() if memory and two_states else None,
            exec_roofline=exe_roof.tolist() if memory else None,
            tail_roofline=tail_roof[0].tolist() if memory else None,
            queue_depth=seg.queue_depth,
        )

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
    def is_end_to_end(self) -> bool:
        return self.data.end_to_end

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
        """Every (cpu_khz, gpu_hz) of the grid points, CPU-major; gpu None without a GPU. With a
        memory domain the pairs repeat once per memory level (``grid_mem``)."""
        pts = self.grid_points
        return pts[:, 0], (pts[:, self.domains.index("gpu")] if "gpu" in self.domains else None)

    @cached_property
    def grid_mem(self) -> np.ndarray | None:
        """The memory level of each grid point, or None without a memory domain."""
        return self.grid_points[:, self.domains.index("mem")] if "mem" in self.domains else None

    def _freqs(self, cpu_khz, gpu_hz, mem_hz=None) -> list[np.ndarray]:
        """The frequencies per domain, broadcast together; refuses a value for a domain the
        estimator lacks and a missing one for a domain it has."""
        d = self.data
        if gpu_hz is None and d.gpu_hz:
            raise ValueError(f"model {d.model!r} was profiled with a GPU: give a GPU frequency")
        if gpu_hz is not None and not d.gpu_hz:
            raise ValueError(f"model {d.model!r} was profiled on a board without a GPU: give no GPU frequency")
        if mem_hz is None and d.mem_hz:
            mem_hz = d.mem_hz[-1]  # not asked: the memory at its highest level, where it boots
        if mem_hz is not None and not d.mem_hz:
            raise ValueError(f"model {d.model!r} was profiled without a memory domain: give no memory frequency")
        given = {"cpu": cpu_khz, "gpu": gpu_hz, "mem": mem_hz}
        values = [given[name] for name in self.domains]
        return list(np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=float)) for v in values)))

    def _context(self, freqs: list[np.ndarray], context_len) -> np.ndarray | None:
        if not self.is_language_model:
            return None
        if context_len is None:
            raise ValueError(f"model {self.data.model!r} is a language model: give a context_len")
        return np.broadcast_to(np.asarray(context_len, dtype=float), freqs[0].shape)

    def _features(self, freqs: list[np.ndarray], context_len) -> np.ndarray:
        return domain_design(freqs, self.data.refs, self._context(freqs, context_len), self.data.context_scale)

    def _roof(self, rows: np.ndarray | None, own: str, freqs: list[np.ndarray], context_len,
              kappa: float = 0.0) -> np.ndarray | int:
        """The roofline terms of ``rows`` at ``freqs`` (0 without a memory domain); ``kappa``: a
        whole-model row's device growth with the context."""
        if rows is None:
            return 0
        d = self.data
        i, m = d.domains.index(own), d.domains.index("mem")
        ctx = self._context(freqs, context_len)
        ell = None if ctx is None else ctx / d.context_scale
        return roofline_term(rows, d.refs[i] / freqs[i], d.refs[m] / freqs[m], ell, d.refs[0] / freqs[0],
                             kappa)

    def _segments_at(self, cpu_khz, gpu_hz, context_len, mem_hz=None):
        """host, dispatch, exec (layers, G), tail (G,), and host_idle (or None) at the points."""
        freqs = self._freqs(cpu_khz, gpu_hz, mem_hz)
        xt = self._features(freqs, context_len).T  # (k, G)
        tabled = self._tabled(freqs, context_len)
        if tabled is not None:  # a memory model at one context: each segment from a small table
            host = tabled(self._host, self._host_roof, "cpu")
            exe = (tabled(self._exec, self._exec_roof, "gpu") if "gpu" in self.domains
                   else _lin(self._exec, xt))
        else:
            host = _lin(self._host, xt) + self._roof(self._host_roof, "cpu", freqs, context_len)
            exe = _lin(self._exec, xt)
            if self._exec_roof is not None and "gpu" in self.domains:
                exe = exe + self._roof(self._exec_roof, "gpu", freqs, context_len)
        disp = _lin(self._dispatch, xt)
        tail = _lin(self._tail, xt) + np.ravel(self._roof(self._tail_roof, self.data.tail_roofline_domain,
                                                     freqs, context_len))
        host_idle = None
        if self._host_idle is not None:
            idle_roof = self._host_idle_roof if self._host_idle_roof is not None else self._host_roof
            host_idle = (tabled(self._host_idle, idle_roof, "cpu") if tabled is not None
                         else _lin(self._host_idle, xt) + self._roof(idle_roof, "cpu", freqs, context_len))
        return host, disp, exe, tail, host_idle

    def _tabled(self, freqs: list[np.ndarray], context_len):
        """For an estimator with a memory domain queried at one context (or none): a function
        giving a segment kind's times at the points from a table over the distinct (own clock,
        memory) pairs, linear terms on those two clocks and the constant folded in, the other
        domains' terms (rarely used: pooled fits) added after. One pass over (segments, points)
        instead of several: what keeps the 800-point grid within its budget. None otherwise."""
        d = self.data
        if self._host_roof is None or (context_len is not None and np.ndim(context_len) > 0
                                       and np.unique(context_len).size > 1):
            return None
        ell = 0.0 if context_len is None else float(np.ravel(context_len)[0]) / d.context_scale
        names, nd = d.domains, len(d.domains)
        xs = [r / f for r, f in zip(d.refs, freqs, strict=True)]
        uniq = [np.unique(x, return_inverse=True) for x in xs]
        lm = self.is_language_model

        def col(coef, j):  # a column's coefficient, its context copy folded in at this context
            return coef[:, j] + (ell * coef[:, nd + 1 + j] if lm else 0.0)

        def term(lin: np.ndarray, roof: np.ndarray, own: str) -> np.ndarray:
            i, m = names.index(own), names.index("mem")
            (uu, iu), (um, im) = uniq[i], uniq[m]
            table = roofline(uu[None, :, None], um[None, None, :], roof[:, 2:3, None], roof[:, 3:4, None],
                             roof[:, 4:5, None]) * (roof[:, 0] + ell * roof[:, 1])[:, None, None]
            table += (col(lin, i)[:, None] * uu[None, :])[:, :, None]
            table += (col(lin, m)[:, None] * um[None, :])[:, None, :]
            table += col(lin, nd)[:, None, None]
            out = np.take(table.reshape(len(lin), -1), iu.ravel() * len(um) + im.ravel(), axis=1)
            for j in range(nd):
                if j not in (i, m) and col(lin, j).any():
                    out += col(lin, j)[:, None] * xs[j][None, :]
            return out

        return term

    def breakdown(
        self,
        cpu_khz: float | np.ndarray,
        gpu_hz: float | np.ndarray | None = None,
        context_len: float | np.ndarray | None = None,
        with_overlap: bool = True,
        host_scale: float = 1.0,
        mem_hz: float | np.ndarray | None = None,
    ) -> Estimate:
        """``gpu_hz`` is None exactly when the estimator has no GPU domain; ``mem_hz`` None means
        the memory's highest level (and is the only choice without a memory domain).
        ``host_scale`` stretches every host segment (launches, host operators, sync), e.g. to ask
        what latency would be if other load slowed the inference thread."""
        freqs = self._freqs(cpu_khz, gpu_hz, mem_hz)
        by = dict(zip(self.domains, freqs, strict=True))
        if self.is_end_to_end:
            return self._whole(freqs, by, context_len, host_scale)
        host, disp, exe, tail, host_idle = self._segments_at(cpu_khz, gpu_hz, context_len, mem_hz)
        if host_scale != 1.0:
            host, tail = host * host_scale, tail * host_scale
            host_idle = host_idle * host_scale if host_idle is not None else None
        b: Breakdown = simulate_pipeline(self.is_gpu, host, disp, exe, tail, with_overlap,
                                         self.data.queue_depth, host_idle)
        ms = 1e-6
        return Estimate(
            cpu_khz=by["cpu"], gpu_hz=by.get("gpu"), mem_hz=by.get("mem"),
            latency_ms=b.latency * ms, host_busy_ms=b.host_busy * ms,
            gpu_busy_ms=b.gpu_busy * ms, overlap_ms=b.overlap * ms, bubble_ms=b.bubble * ms,
            host_wait_ms=b.host_wait * ms,
        )

    def _whole(self, freqs, by, context_len, host_scale) -> Estimate:
        """An end-to-end estimator: the fitted whole-model parts. The device part is the roofline
        term on the GPU (none without a GPU); everything else counts as host time, scaled by
        ``host_scale``. Overlap cannot be told apart in an additive whole-model fit: 0."""
        d = self.data
        xt = self._features(freqs, context_len).T
        linear = _lin(self._tail, xt)
        if self._tail_roof is not None:
            roof = np.ravel(self._roof(self._tail_roof, d.tail_roofline_domain, freqs, context_len,
                                       d.tail_device_context))
        elif "gpu" in d.domains:  # no memory axis: the device part is the GPU's 1/f term
            coef = np.zeros_like(self._tail)
            g = d.domains.index("gpu")
            coef[g::len(d.domains) + 1] = self._tail[g::len(d.domains) + 1]
            roof = _lin(coef, xt)
            linear = linear - roof
        else:
            roof = np.zeros_like(linear)
        if d.tail_roofline_domain == "gpu":
            host, device = linear * host_scale, roof
        else:
            host, device = (linear + roof) * host_scale, np.zeros_like(linear)
        latency = (host + device) * 1e-6
        host_ms, dev_ms = host * 1e-6, device * 1e-6
        return Estimate(
            cpu_khz=by["cpu"], gpu_hz=by.get("gpu"), mem_hz=by.get("mem"), latency_ms=latency,
            host_busy_ms=host_ms, gpu_busy_ms=dev_ms, overlap_ms=np.zeros_like(latency),
            bubble_ms=latency - dev_ms, host_wait_ms=latency - host_ms, measured_breakdown=False,
        )

    def timeline(self, cpu_khz: float, gpu_hz: float, context_len: float | None = None,
                 mem_hz: float | None = None) -> dict:
        """The predicted run at one point, layer by layer, in the profile format's terms (ns from
        the run's start): what the recursion replays, to set beside a measured run."""
        c = np.atleast_1d(np.asarray(cpu_khz, dtype=float))
        g = np.atleast_1d(np.asarray(gpu_hz, dtype=float))
        m = None if mem_hz is None else np.atleast_1d(np.asarray(mem_hz, dtype=float))
        host, disp, exe, tail, host_idle = self._segments_at(c, g, context_len, m)
        steps: list = []
        b = simulate_pipeline(self.is_gpu, host, disp, exe, tail, False, self.data.queue_depth, host_idle, steps)
        layers = []
        for name, gpu, (h0, h1, d0, d1) in zip(self.data.layer_names, self.is_gpu, steps, strict=True):
            layer = {"name": name, "kind": "gpu" if gpu else "cpu", "cpu_start_ns": int(round(h0[0])),
                     "cpu_end_ns": int(round(h1[0]))}
            if gpu:
                layer |= {"gpu_start_ns": int(round(d0[0])), "gpu_end_ns": int(round(d1[0]))}
            layers.append(layer)
        run = {"cpu_khz": int(cpu_khz), "gpu_hz": int(gpu_hz), "context_len": context_len,
               "latency_ns": int(round(b.latency[0])), "layers": layers}
        if mem_hz is not None:
            run["mem_hz"] = int(mem_hz)
        return run

    def latency_ms(
        self,
        cpu_khz: float | np.ndarray,
        gpu_hz: float | np.ndarray | None = None,
        context_len: float | np.ndarray | None = None,
        mem_hz: float | np.ndarray | None = None,
    ) -> np.ndarray:
        return self.breakdown(cpu_khz, gpu_hz, context_len, with_overlap=False, mem_hz=mem_hz).latency_ms

    def grid(self, context_len: float | None = None, with_overlap: bool = True,
             host_scale: float = 1.0) -> Estimate:
        """The estimate at every point of the frequency tables (CPU-major order)."""
        c, g = self.grid_pairs
        return self.breakdown(c, g, context_len, with_overlap, host_scale, mem_hz=self.grid_mem)
