"""Board descriptions (``configs/boards/*.yaml``), validated by pydantic.

A board says which CPU policy runs the inference thread, which GPU node it has, which memory
domain (a devfreq DDR/bus node or Jetson's EMC clock) and how each domain is driven (``userspace``
governor, pinned ``min == max`` limits, or a locked clock rate), with per-OPP power tables like the
kernel's energy model. ``BoardConfig.domains`` turns the sections into the ordered list of
``DomainSpec`` objects everything else iterates over. Boards with a ``simulation`` section can also
run as a virtual board.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from dvfs_schema.domains import DomainSpec
from dvfs_schema.energy import EnergyModel

Mechanism = Literal["userspace", "minmax"]


def _ascending(values: list[int], what: str) -> None:
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{what} must be strictly ascending, got {values}")


class CpuPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: list[int] = Field(min_length=1)
    frequencies_khz: list[PositiveInt] = Field(min_length=1)
    power_mw: list[PositiveFloat] | None = None
    transition_latency_ns: int = 50_000
    # from the write until the new frequency runs; default: the transition latency
    actuation_latency_ns: int | None = Field(None, ge=0)
    governors: list[str] = ["ondemand", "userspace", "powersave", "performance", "schedutil"]
    default_governor: str = "schedutil"

    @model_validator(mode="after")
    def _check(self) -> CpuPolicy:
        _ascending(self.frequencies_khz, "frequencies_khz")
        if self.power_mw is not None and len(self.power_mw) != len(self.frequencies_khz):
            raise ValueError("power_mw needs one entry per frequency in frequencies_khz")
        if self.default_governor not in self.governors:
            raise ValueError(f"default_governor must be one of {self.governors}")
        return self


class CpuDomain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inference_policy: str = Field(pattern=r"^policy[0-9]+$")
    mechanism: Mechanism = "userspace"
    policies: dict[str, CpuPolicy] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CpuDomain:
        bad = [p for p in self.policies if not re.fullmatch(r"policy[0-9]+", p)]
        if bad:
            raise ValueError(f"policy names look like policyN (the cpufreq directory), got {bad}")
        if self.inference_policy not in self.policies:
            raise ValueError(
                f"inference_policy {self.inference_policy!r} is not one of {sorted(self.policies)}"
            )
        return self

    @property
    def inference(self) -> CpuPolicy:
        return self.policies[self.inference_policy]


NODE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.,:+-]*$"  # one path component: no '/', no '..'


class GpuDomain(BaseModel):
    """The GPU: a devfreq device (``devfreq``), an Adreno behind kgsl (``kgsl``, devfreq node plus
    ``/sys/class/kgsl/kgsl-3d0``), or an Arm Mali driven through its devfreq node (``mali``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["devfreq", "kgsl", "mali"]
    node: str = Field(pattern=NODE_PATTERN)
    mechanism: Mechanism = "minmax"
    frequencies_hz: list[PositiveInt] = Field(min_length=1)
    power_mw: list[PositiveFloat] | None = None
    transition_latency_ns: int = 100_000
    actuation_latency_ns: int | None = Field(None, ge=0)
    governors: list[str] = ["simple_ondemand", "performance", "powersave", "userspace"]
    default_governor: str = "simple_ondemand"

    @model_validator(mode="after")
    def _check(self) -> GpuDomain:
        _ascending(self.frequencies_hz, "frequencies_hz")
        if self.power_mw is not None and len(self.power_mw) != len(self.frequencies_hz):
            raise ValueError("power_mw needs one entry per frequency in frequencies_hz")
        if self.default_governor not in self.governors:
            raise ValueError(f"default_governor must be one of {self.governors}")
        if self.mechanism == "userspace" and "userspace" not in self.governors:
            raise ValueError("mechanism 'userspace' needs 'userspace' among governors")
        return self


class MemoryDomain(BaseModel):
    """The memory clock: a devfreq node (RK3588 ``dmc``, Exynos ``mif``, a Qualcomm bus-bandwidth
    voter whose "frequencies" are MB/s: ``unit: MB/s``, used as is) or Jetson's EMC clock through
    the BPMP debugfs interface (``kind: bpmp_emc``, ``node: emc``: a rate written to ``rate`` and
    held with ``mrq_rate_locked``; only the listed lockable rates are used)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["devfreq", "bpmp_emc"]
    node: str = Field(pattern=NODE_PATTERN)
    mechanism: Literal["userspace", "minmax", "locked"] = "minmax"
    unit: Literal["Hz", "MB/s"] = "Hz"
    frequencies_hz: list[PositiveInt] = Field(min_length=1)
    power_mw: list[PositiveFloat] | None = None
    transition_latency_ns: int = 1_000_000
    actuation_latency_ns: int | None = Field(None, ge=0)
    governors: list[str] = ["simple_ondemand", "performance", "powersave", "userspace"]
    default_governor: str | None = "simple_ondemand"

    @model_validator(mode="after")
    def _check(self) -> MemoryDomain:
        _ascending(self.frequencies_hz, "frequencies_hz")
        if self.power_mw is not None and len(self.power_mw) != len(self.frequencies_hz):
            raise ValueError("power_mw needs one entry per frequency in frequencies_hz")
        if self.kind == "bpmp_emc":
            if self.mechanism != "locked":
                raise ValueError("kind 'bpmp_emc' is driven by locking its rate: mechanism must be 'locked'")
        else:
            if self.mechanism == "locked":
                raise ValueError("mechanism 'locked' is for kind 'bpmp_emc'; a devfreq node uses "
                                 "'userspace' or 'minmax'")
            if self.default_governor not in self.governors:
                raise ValueError(f"default_governor must be one of {self.governors}")
            if self.mechanism == "userspace" and "userspace" not in self.governors:
                raise ValueError("mechanism 'userspace' needs 'userspace' among governors")
        return self


class Simulation(BaseModel):
    """Physics of the virtual board (see sysfs_backends/virtual/simulator.py). The ``gpu_*``
    figures are required when the board has a GPU and must be absent when it has none."""

    model_config = ConfigDict(extra="forbid")
    gpu_flops_per_cycle: PositiveFloat | None = None
    gpu_efficiency: PositiveFloat = 0.4
    gpu_dram_gbps: PositiveFloat | None = None
    gpu_kernel_cycles: PositiveFloat = 3000
    gpu_kernel_fixed_ns: float = 1500
    roofline_sharpness: PositiveFloat = 2.5
    launch_cycles: PositiveFloat = 20_000
    launch_fixed_ns: float = 6_000
    dispatch_ns: float = 8_000
    idle_wake_ns: float = 30_000
    idle_wake_after_ns: float = 300_000
    host_ops_per_cycle: PositiveFloat = 1.5
    host_dram_gbps: PositiveFloat = 8.0
    host_op_fixed_ns: float = 2_000  # per-operator runtime overhead when every layer runs on the host
    # the share of a DRAM access's time that does not scale with the memory clock (controller and
    # interconnect latency); the rest is bandwidth, proportional to the memory clock. The
    # ``*_dram_gbps`` figures are at the highest memory level.
    mem_latency_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    sync_cycles: PositiveFloat = 15_000
    sync_fixed_ns: float = 20_000
    noise_sigma: float = 0.03
    outlier_probability: float = 0.002
    outlier_ns: float = 150_000
    queue_depth: PositiveInt | None = None  # kernels the driver lets the host run ahead (None: no limit)
    thermal_cap_gpu_hz: PositiveInt | None = None
    thermal_cap_cpu_khz: PositiveInt | None = None
    thermal_cap_mem_hz: PositiveInt | None = None  # in the memory domain's unit (Hz or MB/s)
    # The virtual kernel's behaviour, as real kernels were seen to behave (docs/real-kernels.md):
    # cpufreq applies new limits from a work item, this long after the write (0: at once) ...
    limit_apply_delay_ns: int = Field(1_000_000, ge=0, le=1_000_000_000)
    # ... unless it is a kernel before 5.4, which resolves limits at once and refuses a crossing
    legacy_limits: bool = False
    # OPPs in the table that the clock cannot produce (it stays at the highest rate below)
    unreachable_cpu_khz: list[PositiveInt] = []
    unreachable_gpu_hz: list[PositiveInt] = []
    # whether cpufreq can read the clock back (cpuinfo_cur_freq): not acpi-cpufreq on an I/O port
    cpu_clock_readback: bool = True
    # the frequency each clock runs at boot (default: the highest); it stays while a userspace
    # governor holds no request, and under a load-following boot governor until the governor changes
    boot_cpu_khz: PositiveInt | None = None
    boot_gpu_hz: PositiveInt | None = None
    # what the virtual board's power monitors really follow, relative to this config's tables: a
    # factor per domain ("cpu", "gpu", "idle"), or one per OPP (sysfs_backends/virtual/power_files.py)
    true_power_scale: dict[Literal["cpu", "gpu", "idle"], PositiveFloat | list[PositiveFloat]] = {}


class BoardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    cpu: CpuDomain
    gpu: GpuDomain | None = None
    memory: MemoryDomain | None = None
    idle_power_mw: float = 200.0
    simulation: Simulation | None = None

    @model_validator(mode="after")
    def _check(self) -> BoardConfig:
        sim = self.simulation
        if sim is not None and self.gpu is not None:
            missing = [k for k in ("gpu_flops_per_cycle", "gpu_dram_gbps") if getattr(sim, k) is None]
            if missing:
                raise ValueError(f"simulation needs {', '.join(missing)} for a board with a gpu section")
        if sim is not None and self.gpu is None:
            extra = [k for k in ("gpu_flops_per_cycle", "gpu_dram_gbps", "thermal_cap_gpu_hz")
                     if getattr(sim, k) is not None]
            if extra:
                raise ValueError(f"simulation: {', '.join(extra)} given but the board has no gpu section")
        for name, scale in (sim.true_power_scale if sim else {}).items():
            table = {"cpu": self.cpu.inference.frequencies_khz, "gpu": self.gpu.frequencies_hz if self.gpu else None,
                     "idle": None}[name]
            if name == "gpu" and table is None:
                raise ValueError("simulation.true_power_scale: gpu given but the board has no gpu section")
            if isinstance(scale, list) and (table is None or len(scale) != len(table)):
                raise ValueError(f"simulation.true_power_scale.{name}: one factor per OPP "
                                 f"({len(table) if table else 'none for idle'}), got {len(scale)}")
        return self

    @property
    def domains(self) -> list[DomainSpec]:
        """The board's frequency domains in order: CPU (the inference policy), GPU, memory. Built on
        each call, not cached: a board copied with other tables (``model_copy``) must not keep the
        original's domains."""
        pol = self.cpu.inference
        out = [DomainSpec(
            name="cpu", kind="cpufreq", node=self.cpu.inference_policy, unit="kHz",
            frequencies=tuple(pol.frequencies_khz), power_mw=_tuple(pol.power_mw),
            mechanism=self.cpu.mechanism, governors=tuple(pol.governors),
            default_governor=pol.default_governor, transition_latency_ns=pol.transition_latency_ns,
            actuation_latency_ns=_actuation(pol.actuation_latency_ns, pol.transition_latency_ns),
            busy_with="host", cpus=tuple(pol.cpus),
        )]
        if self.gpu is not None:
            g = self.gpu
            out.append(DomainSpec(
                name="gpu", kind=g.kind, node=g.node, unit="Hz", frequencies=tuple(g.frequencies_hz),
                power_mw=_tuple(g.power_mw), mechanism=g.mechanism, governors=tuple(g.governors),
                default_governor=g.default_governor, transition_latency_ns=g.transition_latency_ns,
                actuation_latency_ns=_actuation(g.actuation_latency_ns, g.transition_latency_ns),
                busy_with="device",
            ))
        if self.memory is not None:
            m = self.memory
            out.append(DomainSpec(
                name="mem", kind=m.kind, node=m.node, unit=m.unit, frequencies=tuple(m.frequencies_hz),
                power_mw=_tuple(m.power_mw), mechanism=m.mechanism, governors=tuple(m.governors),
                default_governor=m.default_governor, transition_latency_ns=m.transition_latency_ns,
                actuation_latency_ns=_actuation(m.actuation_latency_ns, m.transition_latency_ns),
                busy_with="frame",
            ))
        return out

    def domain(self, name: str) -> DomainSpec:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(f"board {self.name!r} has no {name} domain (it has {[d.name for d in self.domains]})")

    @property
    def domain_tables(self) -> dict[str, list[int]]:
        """The frequency domains the board has, in order (CPU, GPU, memory), each with its table in
        the kernel's unit; the estimator's grid and the governor's choices are over these."""
        return {d.name: list(d.frequencies) for d in self.domains}

    @property
    def energy(self) -> EnergyModel:
        return EnergyModel(self.domains, self.idle_power_mw)

    @property
    def has_power_tables(self) -> bool:
        return self.energy.complete

    def power_mw(self, domain: str, freq: float | np.ndarray) -> float | np.ndarray:
        """Active power of a domain at ``freq`` (its unit), interpolated between OPPs."""
        return self.domain(domain).power_at(freq)

    def frame_energy_j(self, cpu_khz, gpu_hz, host_busy_ns, gpu_busy_ns, latency_ns, mem_hz=None):
        """Energy of one frame (see dvfs_schema.energy): scalars or arrays over grid points."""
        return self.energy.frame_energy_j({"cpu": cpu_khz, "gpu": gpu_hz, "mem": mem_hz},
                                          host_busy_ns, gpu_busy_ns, latency_ns)


def _tuple(values):
    return tuple(values) if values is not None else None


def _actuation(actuation_ns: int | None, transition_ns: int) -> int:
    return transition_ns if actuation_ns is None else actuation_ns
