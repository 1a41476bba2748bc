"""Measured power and energy per frame for the governor's status, from the board's power rails.

The rails are sampled where the governor already does backend I/O on its own schedule (the state
re-read, off any client's request), never while answering ``status``: a phone's rails are a round
trip away. Energy per frame is the board rail's energy over the frames finished between two samples
(a window with no frame is idle time: it sets the power, not the energy per frame). On a board
with several rails, the one standing for the whole board is used (``primary_rail``); every rail's
power is reported too.
"""

from __future__ import annotations

import threading

from sysfs_backends.power_rails import EnergyMeter, MeterSample, energy_between_samples


class PowerTracker:
    """Samples an ``EnergyMeter`` and keeps the latest figures for status."""

    def __init__(self, meter: EnergyMeter) -> None:
        self.meter = meter
        self.rail = meter.primary.name
        self._lock = threading.Lock()
        self._base: tuple[MeterSample, int] | None = None  # where the current window starts
        self._latest: MeterSample | None = None
        self._per_frame_mj: float | None = None
        self._total_uj = 0.0
        self._total_frames = 0

    def sample(self, frames_done: int) -> None:
        """Read the rails now; ``frames_done``: frames finished so far (any monotone count)."""
        s = self.meter.sample()
        with self._lock:
            self._latest = s
            if self._base is not None:
                base, frames_then = self._base
                frames = frames_done - frames_then
                energy_uj = energy_between_samples(base, s, self.rail)
                if frames > 0 and energy_uj is not None:
                    self._per_frame_mj = energy_uj / frames / 1e3
                    self._total_uj += energy_uj
                    self._total_frames += frames
            self._base = (s, frames_done)

    def status(self) -> dict:
        """``power_mw`` of the board rail, ``energy_per_frame_mj`` over the last window with frames,
        totals since the governor started, and every rail's power (with a note if unreadable)."""
        with self._lock:
            s = self._latest
            if s is None:
                return {}
            board = s.rails[self.rail]
            rails = {}
            for rail in self.meter.rails:
                r = s.rails[rail.name]
                entry = {"kind": rail.info.kind, "covers": rail.info.covers,
                         "power_mw": None if r.power_mw is None else round(r.power_mw, 1)}
                if r.note:
                    entry["note"] = r.note
                rails[rail.name] = entry
            return {
                "power_mw": None if board.power_mw is None else round(board.power_mw, 1),
                "power_rail": self.rail,
                "energy_per_frame_mj": None if self._per_frame_mj is None else round(self._per_frame_mj, 3),
                "measured_energy_j": round(self._total_uj / 1e6, 4),
                "measured_frames": self._total_frames,
                "power_rails": rails,
            }
