"""A frequency domain as one object, and the one definition of how the kernel resolves frequencies.

A board has an ordered list of domains (CPU first, then GPU, then memory where the board has them).
Everything that varies with the board's domains (the estimator's grid, the governor's choices, the
energy model, the backends' discovery) iterates over this list; adding a domain is adding an entry,
not a branch in every module.

``DomainSpec`` is what the board config says about a domain (the backend's ``DomainInfo`` is what
the kernel showed). Names are fixed because they are also the profile format's axis keys:
``cpu`` (``cpu_khz``), ``gpu`` (``gpu_hz``), ``mem`` (``mem_hz``).
"""

from __future__ import annotations

import bisect
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

DomainName = Literal["cpu", "gpu", "mem"]
DOMAIN_ORDER: tuple[str, ...] = ("cpu", "gpu", "mem")
# the profile format's and the estimator file's key for each domain's frequencies
AXIS_KEY: dict[str, str] = {"cpu": "cpu_khz", "gpu": "gpu_hz", "mem": "mem_hz"}
DomainKind = Literal["cpufreq", "devfreq", "kgsl", "mali", "bpmp_emc"]
# what keeps a domain busy, for the energy model: the inference thread (``host``), the GPU's
# kernels (``device``), or the whole frame (``frame``: memory is active while either side runs)
BusyWith = Literal["host", "device", "frame"]


def round_to_table(value: int, table: list[int] | tuple[int, ...]) -> int:
    """The kernel's resolution of a request: the lowest supported frequency >= value, else the
    highest (cpufreq's ``CPUFREQ_RELATION_L``; devfreq rounds the same way for min and targets)."""
    i = bisect.bisect_left(table, value)
    return table[min(i, len(table) - 1)]


def highest_at_most(value: int, table: list[int] | tuple[int, ...]) -> int:
    """The highest supported frequency <= value, else the lowest: where a cap at ``value`` leaves a
    domain (a max limit between two OPPs allows only the one below)."""
    i = bisect.bisect_right(table, value)
    return table[max(i - 1, 0)]


class DomainSpec(BaseModel):
    """One frequency domain as the board config describes it."""

    model_config = ConfigDict(frozen=True)

    name: DomainName
    kind: DomainKind
    node: str  # policy name, devfreq device, or the BPMP clock name (for people and discovery)
    unit: Literal["kHz", "Hz", "MB/s"]
    frequencies: tuple[int, ...]
    power_mw: tuple[float, ...] | None = None
    mechanism: Literal["userspace", "minmax", "locked"]
    governors: tuple[str, ...] = ()
    default_governor: str | None = None
    transition_latency_ns: int
    # time from the write until the new frequency runs (the kernel's transition latency is a lower
    # bound: boards were measured at ~1 ms CPU, ~5 ms GPU, ~8 ms memory)
    actuation_latency_ns: int
    busy_with: BusyWith
    cpus: tuple[int, ...] = ()

    @property
    def axis(self) -> str:
        """The profile format's key for this domain's frequencies (``cpu_khz``, ``gpu_hz``, ``mem_hz``)."""
        return AXIS_KEY[self.name]

    def resolve(self, value: int) -> int:
        return round_to_table(value, self.frequencies)

    def cap_level(self, max_limit: int) -> int:
        """The frequency a max limit of ``max_limit`` leaves this domain at most."""
        return highest_at_most(max_limit, self.frequencies)

    def power_at(self, freq):
        """Active power (mW) at ``freq`` (this domain's unit), interpolated between OPPs."""
        if self.power_mw is None:
            raise ValueError(f"the {self.name} domain ({self.node}) has no power table (power_mw)")
        return np.interp(freq, self.frequencies, self.power_mw)
