"""The virtual board's power monitors: the files a real board's kernel shows, fed by its energy model.

So that measured power takes the real code path (sysfs_backends/power_rails.py reading files over
the hook, the FUSE mount or the virtual phone's ADB), the virtual board exposes what its kind of
board really has, laid out as the kernel lays it out:

* boards whose name says ``orin``: an INA3221 on I2C bus 1 at 0x40 (hwmon, ``name`` ``ina3221``)
  with Jetson's three labelled channels ``VDD_IN`` (the module's input: everything),
  ``VDD_CPU_GPU_CV`` and ``VDD_SOC``; bus voltage in mV, current in mA, shunt voltage in uV;
  plus a fan's hwmon that is not a power monitor;
* phones (name says ``phone``): ``power_supply/battery`` (type ``Battery``, ``Discharging``,
  ``current_now`` in uA NEGATIVE while discharging, the kernel ABI's documented convention,
  ``voltage_now`` in uV following the charge left, ``charge_counter`` in uAh) and a ``usb`` supply
  that is not a battery;
* ``generic_pc``: RAPL powercap zones ``intel-rapl:0`` (``package-0``), its sub-zone ``core``
  (``intel-rapl:0:0``) and ``intel-rapl:1`` (``psys``, the platform), ``energy_uj`` counters that
  wrap at ``max_energy_range_uj`` (root-only, mode 0400, as since Linux 5.10).

Other boards have no power monitor (as an RK3588 or a Raspberry Pi 5 board without one).

Energy: each frame the simulator runs charges every rail with what the board's energy model
(``BoardConfig.frame_energy_j`` and its OPP power tables) gives for that frame: the CPU's OPP power
while the host is busy, the GPU's while it runs kernels, the idle power for the frame's duration.
``simulation.true_power_scale`` scales those tables first: the files then carry the true power
while the config keeps the (deliberately wrong) table the governor starts from. The whole frame is
the board total (``VDD_IN``, the battery, ``psys``); sub-rails take their domains' active energy
plus a fixed share of the idle power (``IDLE_SHARE``: the static power of the parts they feed).
Time with no frame running is not charged: the model has no idle between frames, and what is
measured must agree with what is modelled. Counters (RAPL ``energy_uj``, the battery's
``charge_counter``) therefore carry exactly the frames' energy. An instantaneous reading (INA3221,
the battery's ``current_now``) is the mean power over the latest frame (a monitor whose averaging
window is the frame), so reading times the frame's latency is its energy; the files are rewritten
when a frame runs, not while the board idles, so integrating those readings over wall-clock time
equals the frames' energy only while frames run back to back.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dvfs_schema.board import BoardConfig

HWMON_DEV = "/sys/devices/platform/bus@0/c240000.i2c/i2c-1/1-0040"
FAN_DEV = "/sys/devices/platform/pwm-fan"
BATTERY_DEV = "/sys/devices/platform/soc/soc:qcom,pmic_glink/soc:qcom,pmic_glink:qcom,battery_charger"
RAPL_DEV = "/sys/devices/virtual/powercap/intel-rapl"
RAPL_RANGE_UJ = 262_143_328_850  # what Intel packages report
BATTERY_FULL_UAH = 4_500_000
BATTERY_START = 0.8  # state of charge at boot
SHUNT_UOHM = 5000
# rail -> (channel, nominal bus voltage mV) of the Jetson-like INA3221
INA_CHANNELS = {"VDD_IN": (1, 5072), "VDD_CPU_GPU_CV": (2, 5064), "VDD_SOC": (3, 5056)}
# part of the board's idle power each sub-rail carries (the rest feeds what no sub-rail measures)
IDLE_SHARE = {"VDD_IN": 1.0, "VDD_CPU_GPU_CV": 0.2, "VDD_SOC": 0.35,
              "battery": 1.0, "psys": 1.0, "package-0": 0.5, "package-0/core": 0.1}
# which domains' active energy a rail carries
ACTIVE = {"VDD_IN": ("cpu", "gpu"), "VDD_CPU_GPU_CV": ("cpu", "gpu"), "VDD_SOC": (),
          "battery": ("cpu", "gpu"), "psys": ("cpu", "gpu"), "package-0": ("cpu", "gpu"), "package-0/core": ("cpu",)}
RAPL_ZONES = {"package-0": "intel-rapl:0", "package-0/core": "intel-rapl:0/intel-rapl:0:0", "psys": "intel-rapl:1"}


def monitor_kind(board: BoardConfig) -> str | None:
    """Which power monitor the virtual board of this name has (module docstring)."""
    name = board.name.lower()
    if "orin" in name:
        return "ina3221"
    if "phone" in name:
        return "battery"
    if name == "generic_pc":
        return "rapl"
    return None


def _write(path: Path, value, mode: int = 0o444) -> None:
    """Replace an attribute whole (readers never see half a value), whatever its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, f"{value}\n".encode())
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _link(root: Path, link: str, target: str) -> None:
    path = root / link.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_symlink():
        path.symlink_to(os.path.relpath(target, os.path.dirname(link)))


def _sys(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def build(root: Path, board: BoardConfig, state: dict) -> None:
    """Create the board's power-monitor files at boot and their bookkeeping in ``state``."""
    kind = monitor_kind(board)
    if kind is None:
        return
    rails = {"ina3221": list(INA_CHANNELS), "battery": ["battery"], "rapl": list(RAPL_ZONES)}[kind]
    state["power"] = {"kind": kind, "energy_uj": dict.fromkeys(rails, 0.0), "counter_offset_uj": 0,
                      "wall_ns": None, "charge_uah": BATTERY_START * BATTERY_FULL_UAH}
    if kind == "ina3221":
        hw = f"{HWMON_DEV}/hwmon/hwmon1"
        _write(_sys(root, f"{hw}/name"), "ina3221")
        _write(_sys(root, f"{hw}/update_interval"), 1, 0o644)
        for label, (n, _mv) in INA_CHANNELS.items():
            files = {f"in{n}_label": label, f"in{n}_enable": 1, f"shunt{n}_resistor": SHUNT_UOHM,
                     f"curr{n}_crit": 32760, f"curr{n}_max": 32760, f"curr{n}_crit_alarm": 0,
                     f"curr{n}_max_alarm": 0}
            for f, v in files.items():
                _write(_sys(root, f"{hw}/{f}"), v)
        _write(_sys(root, f"{FAN_DEV}/hwmon/hwmon0/name"), "pwmfan")
        _write(_sys(root, f"{FAN_DEV}/hwmon/hwmon0/pwm1"), 128)
        _link(root, "/sys/class/hwmon/hwmon0", f"{FAN_DEV}/hwmon/hwmon0")
        _link(root, "/sys/class/hwmon/hwmon1", hw)
        _link(root, "/sys/bus/i2c/drivers/ina3221/1-0040", HWMON_DEV)
    elif kind == "battery":
        for f, v in {"type": "Battery", "present": 1, "technology": "Li-ion", "health": "Good",
                     "charge_full": BATTERY_FULL_UAH, "temp": 300}.items():
            _write(_sys(root, f"{BATTERY_DEV}/power_supply/battery/{f}"), v)
        _link(root, "/sys/class/power_supply/battery", f"{BATTERY_DEV}/power_supply/battery")
        usb = "/sys/devices/platform/soc/soc:qcom,pmic_glink/soc:qcom,pmic_glink:qcom,usb/power_supply/usb"
        for f, v in {"type": "USB", "online": 0, "present": 0}.items():
            _write(_sys(root, f"{usb}/{f}"), v)
        _link(root, "/sys/class/power_supply/usb", usb)
    else:
        _write(_sys(root, f"{RAPL_DEV}/enabled"), 1, 0o644)
        _link(root, "/sys/class/powercap/intel-rapl", RAPL_DEV)
        for rail, zone in RAPL_ZONES.items():
            d = f"{RAPL_DEV}/{zone}"
            _write(_sys(root, f"{d}/name"), rail.rsplit("/", 1)[-1])
            _write(_sys(root, f"{d}/max_energy_range_uj"), RAPL_RANGE_UJ)
            _write(_sys(root, f"{d}/enabled"), 1, 0o644)
            _link(root, f"/sys/class/powercap/{zone.rsplit('/', 1)[-1]}", d)
    _show(root, state, {r: 0.0 for r in rails})


def _true_board(board: BoardConfig) -> BoardConfig:
    """The board with the power tables its rails really follow (``simulation.true_power_scale``)."""
    scale = board.simulation.true_power_scale if board.simulation else {}
    if not scale:
        return board
    true = board.model_copy(deep=True)
    domains = {"cpu": true.cpu.inference, "gpu": true.gpu}
    for name, s in scale.items():
        if name == "idle":
            true.idle_power_mw = board.idle_power_mw * s
            continue
        dom = domains[name]
        factors = s if isinstance(s, list) else [s] * len(dom.power_mw)
        dom.power_mw = [p * f for p, f in zip(dom.power_mw, factors, strict=True)]
    return true


def account_frame(root: Path, state: dict, board: BoardConfig, cpu_khz: int, gpu_hz: int | None,
                  host_busy_ns: float, gpu_busy_ns: float, latency_ns: float, mem_hz: int | None = None) -> None:
    """Charge one frame to every rail and rewrite the monitor's files (inside the kernel's lock).
    The memory domain's power is shared out like the idle power (it sits on the SoC/board rails)."""
    power = state.get("power")
    if power is None or not board.has_power_tables:
        return
    true = _true_board(board)
    active = {"cpu": float(true.power_mw("cpu", cpu_khz)) * host_busy_ns * 1e-12,
              "gpu": float(true.power_mw("gpu", gpu_hz)) * gpu_busy_ns * 1e-12 if gpu_hz is not None else 0.0}
    total = float(true.frame_energy_j(cpu_khz, gpu_hz, host_busy_ns, gpu_busy_ns, latency_ns, mem_hz=mem_hz))
    idle = total - active["cpu"] - active["gpu"]
    frame_j = {r: sum(active[d] for d in ACTIVE[r]) + IDLE_SHARE[r] * idle for r in power["energy_uj"]}
    power["wall_ns"] = time.monotonic_ns()
    for r, j in frame_j.items():
        power["energy_uj"][r] += j * 1e6
    if power["kind"] == "battery" and power.get("battery_status", "Discharging") == "Discharging":
        volts = _battery_volts(power)
        power["charge_uah"] -= frame_j["battery"] / (volts * 3.6e-3)
    _show(root, state, {r: j * 1e3 / (latency_ns * 1e-9) for r, j in frame_j.items()})


def _battery_volts(power: dict) -> float:
    """Open-circuit voltage of a Li-ion cell, roughly linear in the charge left."""
    return 3.45 + 0.75 * max(power["charge_uah"], 0.0) / BATTERY_FULL_UAH


def _show(root: Path, state: dict, mean_mw: dict[str, float]) -> None:
    """Write the monitor's files from the bookkeeping and each rail's mean power now."""
    power = state["power"]
    kind = power["kind"]
    if kind == "ina3221":
        hw = f"{HWMON_DEV}/hwmon/hwmon1"
        for label, (n, mv) in INA_CHANNELS.items():
            ma = round(mean_mw[label] / (mv / 1000.0))
            _write(_sys(root, f"{hw}/in{n}_input"), mv)
            _write(_sys(root, f"{hw}/curr{n}_input"), ma)
            _write(_sys(root, f"{hw}/in{n + 3}_input"), ma * SHUNT_UOHM // 1000)
    elif kind == "battery":
        d = f"{BATTERY_DEV}/power_supply/battery"
        volts = _battery_volts(power)
        status = power.get("battery_status", "Discharging")
        # discharging: negative, as the ABI documents; charging: the charger's surplus into the cell
        current_ua = -round(mean_mw["battery"] / volts * 1000) if status == "Discharging" else 500_000
        files = {"status": status, "voltage_now": round(volts * 1e6), "current_now": current_ua,
                 "charge_counter": round(power["charge_uah"]),
                 "capacity": round(100 * power["charge_uah"] / BATTERY_FULL_UAH)}
        for f, v in files.items():
            _write(_sys(root, f"{d}/{f}"), v)
    else:
        for rail, zone in RAPL_ZONES.items():
            counter = int(power["counter_offset_uj"] + power["energy_uj"][rail]) % (RAPL_RANGE_UJ + 1)
            _write(_sys(root, f"{RAPL_DEV}/{zone}/energy_uj"), counter, 0o400)


def set_counter_offset(kernel, offset_uj: int) -> None:
    """Test knob: move the RAPL counters (e.g. just below their wrap) without charging energy."""
    with kernel._locked() as state:
        state["power"]["counter_offset_uj"] = int(offset_uj)
        _show(kernel.root, state, {r: 0.0 for r in state["power"]["energy_uj"]})


def set_battery_status(kernel, status: str) -> None:
    """Test knob: what the battery's ``status`` says (a charger plugged in: ``Charging``)."""
    with kernel._locked() as state:
        state["power"]["battery_status"] = status
        _show(kernel.root, state, {"battery": 0.0})


def charged_uj(kernel) -> dict[str, float]:
    """Energy charged to each rail since boot (what the files were computed from), for checks."""
    return dict(kernel.read_state().get("power", {}).get("energy_uj", {}))
