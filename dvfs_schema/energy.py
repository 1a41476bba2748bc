"""The energy model: the one definition of what a frame costs, over any set of domains.

Each domain draws its OPP power while it is busy with what it serves (``DomainSpec.busy_with``): the
CPU policy while the inference thread runs (host busy time), the GPU while its kernels run (device
busy time), the memory controller for the whole frame (DRAM is active while either side works, and
its power at a lower clock is what a memory-bound model trades against a longer frame). On top, the
board's idle power for the frame's duration. Works on scalars or on arrays over grid points.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dvfs_schema.domains import DomainSpec


class EnergyModel:
    def __init__(self, domains: list[DomainSpec], idle_power_mw: float) -> None:
        self.domains = list(domains)
        self.idle_power_mw = float(idle_power_mw)

    @property
    def complete(self) -> bool:
        """Every domain has a power table (otherwise energies cannot be compared across points)."""
        return all(d.power_mw is not None for d in self.domains)

    def frame_energy_j(self, freqs: Mapping[str, object], host_busy_ns, device_busy_ns, latency_ns):
        """Joules of one frame run at ``freqs`` (domain name -> frequency, each in its unit). A
        domain missing from ``freqs`` is taken at none of its power (a board without that domain)."""
        total = 0.0
        for part in self.frame_energy_parts_j(freqs, host_busy_ns, device_busy_ns, latency_ns).values():
            total = total + part
        return total

    def frame_energy_parts_j(self, freqs: Mapping[str, object], host_busy_ns, device_busy_ns,
                             latency_ns) -> dict[str, object]:
        """The same frame energy term by term: ``idle`` and one entry per domain in ``freqs`` (J).
        Kept apart so that measured power can correct each term (governor/power_learning.py)
        without re-running the estimator: the frame's energy is their sum."""
        busy = {"host": host_busy_ns, "device": device_busy_ns, "frame": latency_ns}
        parts = {"idle": np.multiply(self.idle_power_mw, latency_ns) * 1e-12}
        for d in self.domains:
            f = freqs.get(d.name)
            if f is None:
                continue
            parts[d.name] = d.power_at(f) * np.asarray(busy[d.busy_with], dtype=float) * 1e-12
        return parts
