"""Board descriptions (``configs/boards/*.yaml``), validated by pydantic.

A board says which CPU policy runs the inference thread, which GPU node it has and how each domain
is driven (``userspace`` governor or pinned ``min == max`` limits), with per-OPP power tables like
the kernel's energy model. Boards with a ``simulation`` section can also run as a virtual board.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

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
    sync_cycles: PositiveFloat = 15_000
    sync_fixed_ns: float = 20_000
    noise_sigma: float = 0.03
    outlier_probability: float = 0.002
    outlier_ns: float = 150_000
    queue_depth: PositiveInt | None = None  # kernels the driver lets the host run ahead (None: no limit)
    thermal_cap_gpu_hz: PositiveInt | None = None
    thermal_cap_cpu_khz: PositiveInt | None = None
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
    # governor holds no request
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
    def domain_tables(self) -> dict[str, list[int]]:
        """The frequency domains the board has, in order (CPU first), each with its table in the
        kernel's unit; the estimator's grid and the governor's choices are over these."""
        tables = {"cpu": list(self.cpu.inference.frequencies_khz)}
        if self.gpu is not None:
            tables["gpu"] = list(self.gpu.frequencies_hz)
        return tables

    @property
    def has_power_tables(self) -> bool:
        return self.cpu.inference.power_mw is not None and (
            self.gpu is None or self.gpu.power_mw is not None
        )

    def power_mw(self, domain: str, freq: float | np.ndarray) -> float | np.ndarray:
        """Active power of a domain at ``freq`` (its unit), interpolated between OPPs."""
        if domain == "cpu":
            table, power = self.cpu.inference.frequencies_khz, self.cpu.inference.power_mw
        else:
            table, power = self.gpu.frequencies_hz, self.gpu.power_mw
        if power is None:
            raise ValueError(f"board {self.name!r} has no power table for the {domain}")
        return np.interp(freq, table, power)

    def frame_energy_j(self, cpu_khz, gpu_hz, host_busy_ns, gpu_busy_ns, latency_ns):
        """Energy of one frame: each domain's OPP power while it is busy, plus the board's idle
        power for the frame's duration. Works on scalars or arrays over frequency pairs."""
        gpu_mw = self.power_mw("gpu", gpu_hz) if self.gpu is not None else 0.0
        return (self.power_mw("cpu", cpu_khz) * host_busy_ns + gpu_mw * gpu_busy_ns
                + self.idle_power_mw * latency_ns) * 1e-12
