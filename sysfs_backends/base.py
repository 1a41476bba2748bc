"""The backend interface: everything the governor does to hardware goes through it.

One abstraction per hardware domain (``cpu``: the cpufreq policy running the inference thread;
``gpu``: the devfreq/kgsl/Mali device; ``mem``: the memory clock, a devfreq DDR/bus node or Jetson's
EMC behind the BPMP). Nothing above a backend knows a sysfs path: domains are described by the
pydantic models below, in the kernel's own units (CPU kHz, GPU Hz, memory Hz or a bus node's MB/s).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from numbers import Integral
from typing import Literal

from pydantic import BaseModel

from dvfs_schema.domains import AXIS_KEY, DomainKind, DomainName
from sysfs_backends.power_rails import EnergyMeter, RailInfo


class BackendError(RuntimeError):
    """Discovery or configuration problem a person has to fix; the message says how."""


class BackendUnavailable(ConnectionError):
    """The hardware cannot be reached right now (phone unplugged, adbd restarting); the backend
    keeps trying to reconnect in the background and nothing was changed."""


Condition = Literal["ok", "capped", "floored", "unreachable", "pending"]


class DomainInfo(BaseModel):
    """What discovery found for one domain.

    ``cur_source`` says what ``cur`` is: ``hardware`` (the clock's own reading: cpufreq's
    ``cpuinfo_cur_freq``, devfreq's ``cur_freq``, kgsl's ``gpuclk``) or ``last_target`` (cpufreq's
    ``scaling_cur_freq`` where the driver cannot read the clock back: the frequency last asked of
    it, not a measurement)."""

    name: DomainName
    kind: DomainKind
    node: str  # policy name, device node or BPMP clock, for people (never a path to write to)
    unit: Literal["kHz", "Hz", "MB/s"]
    cpus: list[int] = []
    frequencies: list[int]
    governors: list[str]
    mechanism: Literal["userspace", "minmax", "locked"]
    transition_latency_ns: int
    settle_timeout_ns: int  # how long a change may take to show: transition latency plus a margin
    cur_source: Literal["hardware", "last_target"] = "hardware"
    hw_min: int
    hw_max: int
    cooling_devices: list[str] = []  # the thermal cooling devices capping it, for people


class DomainState(BaseModel):
    """Current state of one domain; ``cur`` is the effective frequency the hardware reports.

    ``governor`` is what decides the frequency: the cpufreq/devfreq governor, or for a BPMP clock
    ``locked`` (a rate pinned with ``mrq_rate_locked``) or ``bpmp`` (the firmware's own DVFS)."""

    governor: str
    cur: int
    min: int
    max: int
    # the cap the domain's thermal cooling devices set now (the table's top when none is active),
    # in the domain's unit; None when no cooling device maps to it. Seen even where our pinned
    # limits lie under it (then min/max show only our pin)
    cooling_cap: int | None = None


class Discovery(BaseModel):
    backend: str
    board: str
    domains: dict[str, DomainInfo]
    states: dict[str, DomainState]
    rails: list[RailInfo] = []  # measured power rails (sysfs_backends/power_rails.py), if any
    notes: list[str] = []


class ApplyResult(BaseModel):
    """Outcome of one apply, from the kernel's files once they have settled.

    ``effective`` is the frequency running; ``limits`` the (min, max) the kernel shows.
    ``conditions`` per domain: ``ok`` (the target runs), ``capped`` (the kernel's max is below the
    target: thermal cap, another agent), ``floored`` (its min is above the target), or
    ``unreachable`` (the limits allow the target but the clock runs elsewhere: an OPP its clock
    cannot produce), or ``pending`` (past its settle time the kernel still shows the limits asked
    for before: it has not taken the change up yet, so what runs is the old frequency, not a cap).
    ``settle_ns``: how long the read-back took to show the change."""

    requested: dict[str, int]
    target: dict[str, int]
    effective: dict[str, int]
    limits: dict[str, tuple[int, int]] = {}
    conditions: dict[str, Condition] = {}
    writes: int
    round_trips: int
    settle_ns: int = 0
    cooling_caps: dict[str, int] = {}  # per domain with a cooling device: DomainState.cooling_cap
    notes: list[str] = []

    @property
    def capped(self) -> bool:
        """The kernel's limits hold a domain below what was asked (a cap, not an unreachable OPP)."""
        return any(c == "capped" for c in self.conditions.values())

    @property
    def unreachable(self) -> dict[str, int]:
        """Domains whose clock cannot run the target, with the frequency that runs instead."""
        return {d: self.effective[d] for d, c in self.conditions.items() if c == "unreachable"}


def requested_targets(targets: Mapping[str, int] | None, **by_axis: int | None) -> dict[str, int]:
    """One ``{domain: frequency}`` from ``apply``'s dict and its per-domain keywords (``cpu_khz``,
    ``gpu_hz``, ``mem_hz``): callers written for pairs keep working, new ones pass a dict."""
    if targets is not None and not isinstance(targets, Mapping):
        raise TypeError(f"apply takes a dict of domain -> frequency (e.g. {{'cpu': 1416000, 'gpu': "
                        f"600000000}}) or cpu_khz=/gpu_hz=/mem_hz= keywords, not {targets!r}")
    out = {str(k): v for k, v in (targets or {}).items() if v is not None}
    for name, axis in AXIS_KEY.items():
        value = by_axis.get(axis)
        if value is None:
            continue
        if name in out and out[name] != value:
            raise ValueError(f"apply: {name} given twice ({out[name]} in the dict, {axis}={value})")
        out[name] = value
    for name, value in out.items():
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"apply: {name} frequency must be an integer, got {value!r}")
        out[name] = int(value)  # numpy integers from a grid, too
    return out


class Backend(ABC):
    """Drives one board. Subclasses differ in transport only; see sysfs_backends.sysfs."""

    name: str = "abstract"

    @abstractmethod
    def discover(self) -> Discovery: ...

    @abstractmethod
    def state(self) -> dict[str, DomainState]: ...

    @abstractmethod
    def apply(self, targets: Mapping[str, int] | None = None, *, cpu_khz: int | None = None,
              gpu_hz: int | None = None, mem_hz: int | None = None) -> ApplyResult:
        """Put one point in force: ``targets`` maps a domain name to its frequency (absent: leave
        that domain alone); the ``cpu_khz``/``gpu_hz``/``mem_hz`` keywords say the same per
        domain (``None`` leaves it alone). See ``requested_targets``."""

    @abstractmethod
    def save(self) -> None:
        """Record original governors and limits (memory + state file) before the first write."""

    @abstractmethod
    def restore(self) -> list[str]:
        """Put the saved settings back; returns what was done, for people."""

    def power_meter(self) -> EnergyMeter | None:
        """The board's measured power rails behind one meter; None where it has none."""
        return None

    def recover_crashed(self) -> list[str]:
        """Restore what an earlier run saved but never put back (it was killed); [] if none."""
        return []

    @property
    def connected(self) -> bool:
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; does not restore."""
