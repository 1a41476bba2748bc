"""The profile format ``deadline-dvfs.profile/1`` as pydantic models.

A profile is the seam between whatever measured a model (our OpenCL profiler, a trace importer, a
user's own tool) and the estimator, so every rule of docs/profile-format.md is checked here and a
refusal names the run index, the layer index and the rule that was broken.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dvfs_schema.domains import AXIS_KEY

FORMAT = "deadline-dvfs.profile/1"


class ProfileError(ValueError):
    """A profile that breaks a rule of the format; the message says where and which rule."""


class Layer(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    kind: Literal["gpu", "cpu"]
    cpu_start_ns: int
    cpu_end_ns: int
    gpu_start_ns: int | None = None
    gpu_end_ns: int | None = None


class Run(BaseModel):
    model_config = ConfigDict(extra="allow")

    cpu_khz: int
    gpu_hz: int | None  # null on a board without a GPU domain (frequencies.gpu_hz == [])
    # the memory level in force; required exactly when the profile has a memory table
    mem_hz: int | None = None
    context_len: int | None = None
    latency_ns: int
    layers: list[Layer]  # [] in an end-to-end profile (only latency_ns was measured)

    def freq(self, name: str) -> int | None:
        """This run's frequency of domain ``name`` (``cpu``, ``gpu``, ``mem``)."""
        return getattr(self, AXIS_KEY[name])


class Frequencies(BaseModel):
    model_config = ConfigDict(extra="allow")

    cpu_khz: list[int] = Field(min_length=1)
    gpu_hz: list[int]  # [] on a board without a GPU (CPU-only inference): no GPU axis
    mem_hz: list[int] | None = None  # the memory domain's levels, when the profile varies it

    @property
    def domains(self) -> dict[str, list[int]]:
        """The frequency domains present, in order (CPU, GPU, memory), each with its table."""
        tables = {"cpu": self.cpu_khz, "gpu": self.gpu_hz, "mem": self.mem_hz or []}
        return {name: table for name, table in tables.items() if table}


class Profile(BaseModel):
    """One (device, model) profile: runs at several frequency pairs, layer by layer."""

    model_config = ConfigDict(extra="allow")

    format: str
    model: str
    device: str
    frequencies: Frequencies
    runs: list[Run] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_rules(self) -> Profile:
        for problem in profile_problems(self):
            raise ValueError(problem)
        return self

    @property
    def is_language_model(self) -> bool:
        return self.runs[0].context_len is not None

    @property
    def domains(self) -> list[str]:
        """Names of the frequency domains the profile varies, in order: ``["cpu", "gpu", "mem"]``,
        ``["cpu", "gpu"]``, ``["cpu", "mem"]`` or ``["cpu"]``."""
        return list(self.frequencies.domains)

    @property
    def is_end_to_end(self) -> bool:
        """Every run gives only ``latency_ns`` (``layers: []``): the model is fitted as a whole."""
        return not self.runs[0].layers

    def to_dict(self) -> dict[str, Any]:
        """The profile as the JSON document of the format: ``mem_hz`` appears only when the profile
        has a memory table, so a profile without one is byte-for-byte what it was before."""
        data = self.model_dump(mode="json")
        if self.frequencies.mem_hz is None:
            data["frequencies"].pop("mem_hz", None)
            for run in data["runs"]:
                if run.get("mem_hz") is None:
                    run.pop("mem_hz", None)
        for run in data["runs"]:
            for layer in run["layers"]:
                if layer["kind"] == "cpu":
                    layer.pop("gpu_start_ns", None)
                    layer.pop("gpu_end_ns", None)
        return data

    def layer_signature(self) -> list[tuple[str, str]]:
        return [(layer.name, layer.kind) for layer in self.runs[0].layers]


def _where(run: int | None = None, layer: int | None = None) -> str:
    parts = []
    if run is not None:
        parts.append(f"run {run}")
    if layer is not None:
        parts.append(f"layer {layer}")
    return ", ".join(parts) if parts else "profile"


def profile_problems(p: Profile) -> list[str]:
    """Every broken rule, each as '<where>: <rule>'; the validator reports the first."""
    problems: list[str] = []
    if p.format != FORMAT:
        problems.append(f"profile: rule 'format': must be {FORMAT!r}, got {p.format!r}")
    axes = [("cpu_khz", p.frequencies.cpu_khz), ("gpu_hz", p.frequencies.gpu_hz)]
    if p.frequencies.mem_hz is not None:
        axes.append(("mem_hz", p.frequencies.mem_hz))
    for axis, values in axes:
        if any(v <= 0 for v in values):
            problems.append(f"profile: rule 'frequencies.{axis} positive': got {values}")
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            problems.append(
                f"profile: rule 'frequencies.{axis} strictly ascending': got {values}"
            )
    if problems:
        return problems
    tables = {"cpu_khz": p.frequencies.cpu_khz, "gpu_hz": p.frequencies.gpu_hz}
    signature = p.layer_signature()
    language_model = p.runs[0].context_len is not None
    end_to_end = not p.runs[0].layers
    mem_table = p.frequencies.mem_hz
    for r, run in enumerate(p.runs):
        if mem_table:
            if run.mem_hz is None:
                problems.append(
                    f"{_where(r)}: rule 'mem_hz required when frequencies.mem_hz is present': "
                    "this run gives no memory level"
                )
            elif run.mem_hz not in mem_table:
                problems.append(
                    f"{_where(r)}: rule 'mem_hz in frequencies.mem_hz': {run.mem_hz} is not one "
                    f"of {mem_table}"
                )
        elif run.mem_hz is not None:
            problems.append(
                f"{_where(r)}: rule 'mem_hz only with frequencies.mem_hz': the profile has no "
                f"memory table but this run gives {run.mem_hz}"
            )
        for axis, table in tables.items():
            value = getattr(run, axis)
            if not table and value is not None:
                problems.append(
                    f"{_where(r)}: rule '{axis} null when frequencies.{axis} is []': the profile "
                    f"has no {axis.split('_')[0].upper()} domain but this run gives {value}"
                )
            elif table and value not in table:
                problems.append(
                    f"{_where(r)}: rule '{axis} in frequencies.{axis}': {value} is not one of {table}"
                )
        if (run.context_len is not None) != language_model:
            problems.append(
                f"{_where(r)}: rule 'context_len': every run of a profile gives a context_len "
                "(language model) or none does"
            )
        if run.context_len is not None and run.context_len < 0:
            problems.append(f"{_where(r)}: rule 'context_len >= 0': got {run.context_len}")
        if run.latency_ns <= 0:
            problems.append(f"{_where(r)}: rule 'latency_ns > 0': got {run.latency_ns}")
        if not run.layers:
            if not end_to_end:
                problems.append(
                    f"{_where(r)}: rule 'all runs per-layer or all end-to-end': this run has no "
                    "layers but run 0 has"
                )
            continue
        if end_to_end:
            problems.append(
                f"{_where(r)}: rule 'all runs per-layer or all end-to-end': this run has layers "
                "but run 0 is end-to-end (layers: [])"
            )
            continue
        if [(x.name, x.kind) for x in run.layers] != signature:
            first = next(
                (i for i, (x, s) in enumerate(zip(run.layers, signature, strict=False))
                 if (x.name, x.kind) != s),
                min(len(run.layers), len(signature)),
            )
            problems.append(
                f"{_where(r, first)}: rule 'same layer sequence in every run': differs from run 0"
            )
            continue
        if not p.frequencies.gpu_hz:
            first_gpu = next((i for i, x in enumerate(run.layers) if x.kind == "gpu"), None)
            if first_gpu is not None:
                problems.append(
                    f"{_where(r, first_gpu)}: rule 'no gpu layers when frequencies.gpu_hz is []': "
                    "a profile without a GPU domain has only kind 'cpu' layers"
                )
                continue
        problems.extend(_layer_problems(r, run))
    return problems


def _layer_problems(r: int, run: Run) -> list[str]:
    problems: list[str] = []
    host_free = 0  # end of the previous host interval
    device_free = 0  # end of the previous device interval (in-order queue)
    last_end = 0
    for i, x in enumerate(run.layers):
        where = _where(r, i)
        if x.cpu_start_ns < 0 or x.cpu_end_ns < x.cpu_start_ns:
            problems.append(f"{where}: rule '0 <= cpu_start_ns <= cpu_end_ns'")
        if x.cpu_start_ns < host_free:
            problems.append(
                f"{where}: rule 'host order': cpu_start_ns {x.cpu_start_ns} is before the previous "
                f"layer's cpu_end_ns {host_free}"
            )
        if x.kind == "gpu":
            if x.gpu_start_ns is None or x.gpu_end_ns is None:
                problems.append(f"{where}: rule 'gpu layer has gpu_start_ns and gpu_end_ns'")
                continue
            if x.gpu_end_ns < x.gpu_start_ns:
                problems.append(f"{where}: rule 'gpu_start_ns <= gpu_end_ns'")
            if x.gpu_start_ns < x.cpu_start_ns:
                problems.append(
                    f"{where}: rule 'a kernel starts after its launch began': gpu_start_ns "
                    f"{x.gpu_start_ns} < cpu_start_ns {x.cpu_start_ns}"
                )
            if x.gpu_start_ns < device_free:
                problems.append(
                    f"{where}: rule 'device order': gpu_start_ns {x.gpu_start_ns} is before the "
                    f"previous kernel's gpu_end_ns {device_free}"
                )
            device_free = max(device_free, x.gpu_end_ns)
        else:
            if x.gpu_start_ns is not None or x.gpu_end_ns is not None:
                problems.append(f"{where}: rule 'cpu layer has no gpu times'")
            if x.cpu_start_ns < device_free:
                problems.append(
                    f"{where}: rule 'cpu layer starts after the device drained': cpu_start_ns "
                    f"{x.cpu_start_ns} < end of earlier device work {device_free}"
                )
        host_free = max(host_free, x.cpu_end_ns)
        last_end = max(last_end, x.cpu_end_ns, x.gpu_end_ns or 0)
    if run.latency_ns < last_end:
        problems.append(
            f"{_where(r)}: rule 'latency_ns covers every layer': latency_ns {run.latency_ns} < "
            f"last layer end {last_end}"
        )
    return problems


def parse_profile(data: dict[str, Any], source: str = "profile") -> Profile:
    """Validate a decoded profile; a refusal raises ProfileError naming source, run, layer, rule."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = list(err["loc"])
            where = []
            if len(loc) >= 2 and loc[0] == "runs":
                where.append(f"run {loc[1]}")
                if len(loc) >= 4 and loc[2] == "layers":
                    where.append(f"layer {loc[3]}")
                    loc = loc[4:]
                else:
                    loc = loc[2:]
            field = ".".join(str(x) for x in loc)
            msg = err["msg"].removeprefix("Value error, ")
            prefix = ", ".join(where)
            if field:
                prefix = f"{prefix}: field '{field}'" if prefix else f"field '{field}'"
            messages.append(f"{prefix}: {msg}" if prefix else msg)
        raise ProfileError(f"{source}: " + "; ".join(messages)) from None



def build_profile(model: str, device: str, tables: dict[str, list[int]], runs: list[dict[str, Any]],
                  **extra: Any) -> Profile:
    """A profile made by one of our tools (the virtual board, profilers, importers), through the
    same model and rules as a file read from disk. ``tables`` maps the board's domains (``cpu``,
    ``gpu``, ``mem``) to their tables; a board without a GPU gets ``gpu_hz: []`` and runs give
    ``gpu_hz: null``; the memory axis appears only when the board has one."""
    frequencies: dict[str, Any] = {"cpu_khz": list(tables["cpu"]), "gpu_hz": list(tables.get("gpu", []))}
    if tables.get("mem"):
        frequencies["mem_hz"] = list(tables["mem"])
    data = {"format": FORMAT, "model": model, "device": device, "frequencies": frequencies,
            "runs": runs, **extra}
    return parse_profile(data, f"profile of {model} on {device}")
