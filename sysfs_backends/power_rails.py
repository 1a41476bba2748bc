"""Measured power rails: what the board itself says it consumes, beside what the energy model says.

A power rail is to energy what a frequency domain is to clocks: an object discovered by the
backend's transport (local files or a phone over ADB), with a name, a kind, what it covers
(``board`` total, ``cpu``, ``gpu``, ``soc``, ``mem``) and the reads one sample needs. Nothing above
``sysfs_backends`` knows a path. Three kinds, each as the kernel exposes it:

* ``ina3221``: the hwmon driver of TI's triple power monitor (Jetson boards), a hwmon directory
  whose ``name`` is ``ina3221`` (``/sys/class/hwmon/hwmonN``, or through
  ``/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/``): per channel ``in<n>_label`` (the rail,
  e.g. ``VDD_IN``), ``in<n>_input`` (bus voltage, mV) and ``curr<n>_input`` (current, mA); power
  is their product, computed here (Documentation/hwmon/ina3221.rst). A disabled channel answers
  its reads with an error; it is reported, not guessed.
* ``battery``: a ``power_supply`` of type ``Battery`` (``/sys/class/power_supply/battery`` on a
  phone): ``current_now`` (uA), ``voltage_now`` (uV), ``power_now`` (uW) where the driver has it,
  ``status``, and ``charge_counter`` (uAh left) where present. The sign of ``current_now`` varies
  between fuel gauges (the ABI documents negative while discharging since 2020; many gauges report
  positive), so the sign is never trusted: ``status`` decides. While ``Discharging``, the board
  draws |I| x V from the battery; while charging or full, the charger feeds the board and the
  battery's current says nothing about consumption, so there is no reading (with a note). Energy
  over an interval comes from the coulomb counter where there is one (charge used x voltage),
  else from integrating the power readings.
* ``rapl``: powercap zones ``/sys/class/powercap/intel-rapl:N[:M]`` (Intel, and AMD's RAPL driver):
  ``name`` (``package-N``, ``core``, ``uncore``, ``dram``, ``psys``), ``energy_uj`` (a counter that
  wraps at ``max_energy_range_uj``; root-only since Linux 5.10). Energy over an interval is the
  counter's difference, wrap-around included; power is that over the elapsed time.

``EnergyMeter`` reads every rail in ONE transport batch (one round trip to a phone) and keeps, per
rail, the energy since its first sample: counter differences where the rail has a counter,
trapezoidal integration of instantaneous power where it has only power.
"""

from __future__ import annotations

import errno
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from sysfs_backends.transport import OpResult, Read, Transport

HWMON_DIR = "/sys/class/hwmon"
I2C_DRIVERS_DIR = "/sys/bus/i2c/drivers"
POWER_SUPPLY_DIR = "/sys/class/power_supply"
POWERCAP_DIR = "/sys/class/powercap"

Part = Literal["board", "cpu", "gpu", "soc", "mem", "other"]
RAPL_ZONE = re.compile(r"^intel-rapl:\d+(:\d+)?$")
I2C_DEVICE = re.compile(r"^\d+-[0-9a-f]{4}$")
# what a RAPL zone's name says it measures
RAPL_COVERS: dict[str, list[Part]] = {"core": ["cpu"], "uncore": ["gpu"], "dram": ["mem"], "psys": ["board"]}
# words of an INA3221 channel label (Jetson names: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC, POM_5V_GPU, VDDQ_VDD2_1V8AO)
LABEL_WORDS: dict[str, Part] = {"IN": "board", "VIN": "board", "CPU": "cpu", "GPU": "gpu", "SOC": "soc",
                                "DDR": "mem", "VDDQ": "mem", "VDD2": "mem", "MEM": "mem", "EMC": "mem"}


class RailInfo(BaseModel):
    """What discovery found for one rail (for people and for status; ``source`` is never written)."""

    name: str  # the rail's own name: an INA3221 label, the supply's name, a RAPL zone's name
    kind: Literal["ina3221", "battery", "rapl"]
    covers: list[Part]
    quantity: Literal["power", "energy"]  # instantaneous power (mW), or an energy counter (uJ)
    source: str  # the directory the kernel shows it in


@dataclass(frozen=True)
class RailReading:
    """One read of one rail: instantaneous power and/or a counter, or a note saying why not."""

    power_mw: float | None = None
    counter_uj: int | None = None  # an energy counter (RAPL), as read
    charge_uah: int | None = None  # a coulomb counter (charge left in a battery)
    voltage_uv: int | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.power_mw is not None or self.counter_uj is not None or self.charge_uah is not None


def _why(result: OpResult) -> str:
    """One phrase for a failed read, naming the file."""
    if result.errno == errno.ENOENT:
        return f"{result.op.path} does not exist"
    if result.errno in (errno.EACCES, errno.EPERM):
        return f"{result.op.path} is not readable (permission denied)"
    if result.errno == errno.ENODATA:
        return f"{result.op.path} has no data (channel disabled?)"
    name = errno.errorcode.get(result.errno or errno.EIO, str(result.errno))
    return f"{result.op.path}: {name}: {os.strerror(result.errno or errno.EIO)}"


def _number(result: OpResult) -> int:
    """The integer a read returned; ValueError naming the file otherwise."""
    if not result.ok:
        raise ValueError(_why(result))
    try:
        return int(str(result.value).split()[0])
    except (ValueError, IndexError):
        raise ValueError(f"{result.op.path}: not a number: {result.value!r}") from None


class PowerRail(ABC):
    """One rail: the reads a sample needs and how to turn them into a reading."""

    info: RailInfo

    @property
    def name(self) -> str:
        return self.info.name

    @abstractmethod
    def reads(self) -> list[str]:
        """Absolute paths to read for one sample (batched with every other rail's)."""

    @abstractmethod
    def parse(self, results: dict[str, OpResult]) -> RailReading:
        """A reading from the batch's results (keyed by path); never raises for bad files."""

    def energy_between(self, before: RailReading, after: RailReading) -> float | None:
        """Energy (uJ) between two readings when the rail counts it; None: integrate power."""
        return None


class Ina3221Rail(PowerRail):
    def __init__(self, directory: str, channel: int, label: str, name: str) -> None:
        words = re.split(r"[_\W]+", label.upper())
        covers = sorted({LABEL_WORDS[w] for w in words if w in LABEL_WORDS} or {"other"})
        if "board" in covers:  # VDD_IN / VIN_SYS_5V0: the module's input, everything
            covers = ["board"]
        self.info = RailInfo(name=name, kind="ina3221", covers=covers, quantity="power", source=directory)
        self.voltage = f"{directory}/in{channel}_input"
        self.current = f"{directory}/curr{channel}_input"

    def reads(self) -> list[str]:
        return [self.voltage, self.current]

    def parse(self, results: dict[str, OpResult]) -> RailReading:
        try:
            mv, ma = _number(results[self.voltage]), _number(results[self.current])
        except ValueError as exc:
            return RailReading(note=str(exc))
        return RailReading(power_mw=mv * ma / 1000.0, voltage_uv=mv * 1000)


class BatteryRail(PowerRail):
    def __init__(self, directory: str, name: str, files: set[str]) -> None:
        counted = "charge_counter" in files
        self.info = RailInfo(name=name, kind="battery", covers=["board"],
                             quantity="energy" if counted else "power", source=directory)
        self.status = f"{directory}/status"
        self.current = f"{directory}/current_now" if "current_now" in files else None
        self.voltage = f"{directory}/voltage_now" if "voltage_now" in files else None
        self.power = f"{directory}/power_now" if "power_now" in files else None
        self.charge = f"{directory}/charge_counter" if counted else None
        self.convention: str | None = None  # how this gauge signs current while discharging, once seen

    def reads(self) -> list[str]:
        return [p for p in (self.status, self.current, self.voltage, self.power, self.charge) if p]

    def parse(self, results: dict[str, OpResult]) -> RailReading:
        st = results[self.status]
        if not st.ok:
            return RailReading(note=f"{_why(st)}: cannot tell discharge from charge")
        status = str(st.value).strip()
        try:
            volts = _number(results[self.voltage]) if self.voltage else None
            charge = _number(results[self.charge]) if self.charge else None
        except ValueError as exc:
            return RailReading(note=str(exc))
        if status != "Discharging":
            return RailReading(charge_uah=charge, voltage_uv=volts, note=(
                f"{self.info.name}: status {status!r}: the charger feeds the board, so the battery's "
                "current is not its consumption (unplug the charger to measure)"))
        try:
            if self.power:  # the gauge's own power figure (uW); its sign is not documented either
                mw = abs(_number(results[self.power])) / 1000.0
            elif self.current and volts is not None:
                ua = _number(results[self.current])
                if ua:
                    self.convention = "negative while discharging" if ua < 0 else "positive while discharging"
                mw = abs(ua) * volts / 1e9
            else:
                return RailReading(charge_uah=charge, voltage_uv=volts,
                                   note=f"{self.info.source}: neither power_now nor current_now and voltage_now")
        except ValueError as exc:
            return RailReading(charge_uah=charge, voltage_uv=volts, note=str(exc))
        return RailReading(power_mw=mw, charge_uah=charge, voltage_uv=volts)

    def energy_between(self, before: RailReading, after: RailReading) -> float | None:
        """Charge used times the mean voltage (uAh x uV -> uJ: x 3.6e-3), if both have both."""
        if None in (before.charge_uah, after.charge_uah, before.voltage_uv, after.voltage_uv):
            return None
        if after.note or before.note:  # charging meanwhile: the counter went up, not a draw
            return None
        used_uah = before.charge_uah - after.charge_uah
        if used_uah < 0:
            return None
        return used_uah * 3.6e-3 * (before.voltage_uv + after.voltage_uv) / 2


class RaplRail(PowerRail):
    def __init__(self, directory: str, name: str, covers: list[Part], range_uj: int) -> None:
        self.info = RailInfo(name=name, kind="rapl", covers=covers, quantity="energy", source=directory)
        self.counter = f"{directory}/energy_uj"
        self.range_uj = range_uj

    def reads(self) -> list[str]:
        return [self.counter]

    def parse(self, results: dict[str, OpResult]) -> RailReading:
        r = results[self.counter]
        if not r.ok and r.errno in (errno.EACCES, errno.EPERM):
            return RailReading(note=f"{self.counter} is root-only (Linux 5.10 and later): run as root to measure")
        try:
            return RailReading(counter_uj=_number(r))
        except ValueError as exc:
            return RailReading(note=str(exc))

    def energy_between(self, before: RailReading, after: RailReading) -> float | None:
        """The counter's increase; a smaller value than before means it wrapped once past
        ``max_energy_range_uj`` back to 0 (a sampling interval never spans two wraps: the
        smallest range, ~65 kJ on package counters, takes minutes at any package's power)."""
        if before.counter_uj is None or after.counter_uj is None:
            return None
        delta = after.counter_uj - before.counter_uj
        if delta < 0:
            delta += self.range_uj + 1
        return float(delta)


# ---- discovery ------------------------------------------------------------------------------------
def _read_all(transport: Transport, paths: list[str]) -> dict[str, OpResult]:
    if not paths:
        return {}
    return {r.op.path: r for r in transport.run([Read(p) for p in paths])}


def _hwmon_dirs(transport: Transport) -> list[str]:
    """INA3221 hwmon directories: the hwmon class, else the driver's devices on the I2C bus."""
    listed = [f"{HWMON_DIR}/{h}" for h in transport.listdir(HWMON_DIR)]
    names = _read_all(transport, [f"{d}/name" for d in listed])
    found = [d for d in listed if names[f"{d}/name"].ok and names[f"{d}/name"].value.startswith("ina3221")]
    if found:
        return found
    for driver in transport.listdir(I2C_DRIVERS_DIR):
        if not driver.startswith("ina3221"):
            continue
        for dev in transport.listdir(f"{I2C_DRIVERS_DIR}/{driver}"):
            if I2C_DEVICE.match(dev):
                base = f"{I2C_DRIVERS_DIR}/{driver}/{dev}/hwmon"
                found += [f"{base}/{h}" for h in transport.listdir(base) if h.startswith("hwmon")]
    return found


def _ina3221_rails(transport: Transport, notes: list[str]) -> list[PowerRail]:
    rails: list[PowerRail] = []
    for d in _hwmon_dirs(transport):
        files = set(transport.listdir(d))
        channels = sorted(int(m.group(1)) for f in files if (m := re.fullmatch(r"in([1-3])_label", f)))
        res = _read_all(transport, [f"{d}/in{n}_label" for n in channels]
                        + [f"{d}/in{n}_enable" for n in channels if f"in{n}_enable" in files])
        for n in channels:
            label = res[f"{d}/in{n}_label"]
            enable = res.get(f"{d}/in{n}_enable")
            if not label.ok or not label.value:
                notes.append(f"power: {_why(label) if not label.ok else f'{d}/in{n}_label is empty'}; "
                             f"channel {n} skipped")
            elif enable is not None and enable.ok and enable.value.strip() == "0":
                notes.append(f"power: {d}: channel {n} ({label.value}) is disabled (in{n}_enable is 0)")
            elif f"curr{n}_input" not in files or f"in{n}_input" not in files:
                notes.append(f"power: {d}: channel {n} ({label.value}) has no curr{n}_input/in{n}_input")
            else:
                name = label.value
                if any(r.name == name for r in rails):  # two monitors with the same label
                    name = f"{name}@{d.rsplit('/', 1)[-1]}"
                rails.append(Ina3221Rail(d, n, label.value, name))
    return rails


def _battery_rails(transport: Transport, notes: list[str]) -> list[PowerRail]:
    rails: list[PowerRail] = []
    supplies = [f"{POWER_SUPPLY_DIR}/{s}" for s in transport.listdir(POWER_SUPPLY_DIR)]
    types = _read_all(transport, [f"{s}/type" for s in supplies])
    for s in supplies:
        t = types[f"{s}/type"]
        if not t.ok or t.value.strip() != "Battery":
            continue
        files = set(transport.listdir(s))
        if "status" not in files or not ({"power_now"} & files or {"current_now", "voltage_now"} <= files):
            notes.append(f"power: {s}: a battery without status and power_now or current_now+voltage_now; "
                         "not measured")
            continue
        rails.append(BatteryRail(s, s.rsplit("/", 1)[-1], files))
    return rails


def _rapl_rails(transport: Transport, notes: list[str]) -> list[PowerRail]:
    zones = [z for z in transport.listdir(POWERCAP_DIR) if RAPL_ZONE.match(z)]
    res = _read_all(transport, [f"{POWERCAP_DIR}/{z}/{f}" for z in zones for f in ("name", "max_energy_range_uj")])
    names = {z: res[f"{POWERCAP_DIR}/{z}/name"].value.strip() for z in zones if res[f"{POWERCAP_DIR}/{z}/name"].ok}
    rails: list[PowerRail] = []
    for z in zones:
        d = f"{POWERCAP_DIR}/{z}"
        rng = res[f"{d}/max_energy_range_uj"]
        if z not in names:
            notes.append(f"power: {_why(res[f'{d}/name'])}; RAPL zone {z} skipped")
            continue
        try:
            range_uj = _number(rng)
        except ValueError as exc:
            notes.append(f"power: {exc}; RAPL zone {z} skipped (its counter's wrap is unknown)")
            continue
        zone_name = names[z]
        parent = z.rsplit(":", 1)[0] if z.count(":") == 2 else None
        covers: list[Part] = RAPL_COVERS.get(zone_name, ["soc"] if zone_name.startswith("package") else ["other"])
        name = f"{names.get(parent, parent)}/{zone_name}" if parent else zone_name
        rails.append(RaplRail(d, name, covers, range_uj))
    return rails


def discover_rails(transport: Transport) -> tuple[list[PowerRail], list[str]]:
    """Every rail the transport's tree shows, and notes on what was found but cannot be read."""
    notes: list[str] = []
    rails = _ina3221_rails(transport, notes) + _battery_rails(transport, notes) + _rapl_rails(transport, notes)
    return rails, notes


def primary_rail(rails: list[PowerRail]) -> PowerRail | None:
    """The rail that best stands for the whole board: a board total, else the SoC/package, else
    the first one (whose ``covers`` says what it is)."""
    for part in ("board", "soc"):
        for r in rails:
            if part in r.info.covers:
                return r
    return rails[0] if rails else None


# ---- sampling ---------------------------------------------------------------------------------------
@dataclass
class RailSample:
    """A rail at one sample: its reading, its power (the counted mean over the last interval where
    the rail counts energy, else the reading), its energy since the meter's first sample, and how
    many intervals it could not measure (unreadable, charging): energy between two samples is
    known only where that count did not change."""

    reading: RailReading
    power_mw: float | None = None
    energy_uj: float = 0.0
    note: str | None = None
    gaps: int = 0


@dataclass
class MeterSample:
    t_ns: int
    rails: dict[str, RailSample] = field(default_factory=dict)


class EnergyMeter:
    """Samples every rail in one batch and integrates each into energy since the first sample."""

    def __init__(self, transport: Transport, rails: list[PowerRail],
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.transport = transport
        self.rails = rails
        self.clock_ns = clock_ns
        self._paths = [p for r in rails for p in r.reads()]
        self._last: MeterSample | None = None

    @property
    def primary(self) -> PowerRail | None:
        return primary_rail(self.rails)

    def sample(self) -> MeterSample:
        """Read all rails now (one round trip) and bring each rail's energy up to date."""
        t0 = self.clock_ns()
        results = _read_all(self.transport, self._paths)
        t = (t0 + self.clock_ns()) // 2
        out = MeterSample(t_ns=t)
        prev = self._last
        for rail in self.rails:
            reading = rail.parse(results)
            before = prev.rails.get(rail.name) if prev else None
            sample = RailSample(reading=reading, power_mw=reading.power_mw, note=reading.note)
            if before is None:
                sample.energy_uj = 0.0
            else:
                dt_ns = t - prev.t_ns
                delta = rail.energy_between(before.reading, reading)
                if delta is not None:  # counted: its mean power beats a spot reading
                    sample.power_mw = delta / dt_ns * 1e6 if dt_ns > 0 else sample.power_mw
                elif reading.power_mw is not None and before.reading.power_mw is not None:
                    delta = (before.reading.power_mw + reading.power_mw) / 2 * dt_ns * 1e-6  # mW x ns -> uJ
                sample.gaps = before.gaps + (delta is None)
                sample.energy_uj = before.energy_uj + (delta or 0.0)
            out.rails[rail.name] = sample
        self._last = out
        return out


def energy_between_samples(a: MeterSample, b: MeterSample, rail: str) -> float | None:
    """uJ a rail measured from sample ``a`` to ``b`` (None if it could not measure either)."""
    ra, rb = a.rails.get(rail), b.rails.get(rail)
    if ra is None or rb is None or ra.gaps != rb.gaps or not ra.reading.ok:
        return None
    return rb.energy_uj - ra.energy_uj
