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

WINDOW_NS = 2_000_000_000  # energy per frame is taken over at least this much of the recent past
BASE_EVERY_NS = 500_000_000  # how often a new window start is kept


class PowerTracker:
    """Samples an ``EnergyMeter`` and keeps the latest figures for status."""

    def __init__(self, meter: EnergyMeter) -> None:
        self.meter = meter
        self.rail = meter.primary.name
        self._lock = threading.Lock()
        self._bases: list[tuple[MeterSample, int]] = []  # window starts, oldest first
        self._prev: tuple[MeterSample, int] | None = None
        self._latest: MeterSample | None = None
        self._per_frame_mj: float | None = None
        self._total_uj = 0.0
        self._total_frames = 0

    def sample(self, frames_done: int) -> tuple[float | None, int] | None:
        """Read the rails now; ``frames_done``: frames so far (any count that only grows). Returns
        the board rail's energy (uJ, None where it could not measure) and the time (ns) since the
        previous sample, for the online power learning; None at the first sample.

        Energy per frame is over the recent past, from the newest kept start at least
        ``WINDOW_NS`` old (or the oldest while none is): a counter's resolution (a battery's
        1 uAh is ~14 mJ) and the frames straddling a sample then weigh little."""
        s = self.meter.sample()
        step = None
        with self._lock:
            self._latest = s
            if self._prev is not None:
                prev, frames_then = self._prev
                step_uj = energy_between_samples(prev, s, self.rail)
                step = (step_uj, s.t_ns - prev.t_ns)
                if step_uj is None or frames_done < frames_then:  # a gap, or apps evicted: start over
                    self._bases = []
                elif frames_done > frames_then:  # totals: intervals with frames only (idle is not a frame's)
                    self._total_uj += step_uj
                    self._total_frames += frames_done - frames_then
            self._prev = (s, frames_done)
            if not self._bases or s.t_ns - self._bases[-1][0].t_ns >= BASE_EVERY_NS:
                self._bases.append((s, frames_done))
            while len(self._bases) > 2 and s.t_ns - self._bases[1][0].t_ns >= WINDOW_NS:
                self._bases.pop(0)
            base, frames_then = self._bases[0]
            energy_uj = energy_between_samples(base, s, self.rail)
            if frames_done > frames_then and energy_uj is not None:
                self._per_frame_mj = energy_uj / (frames_done - frames_then) / 1e3
        return step

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
