"""Measured power rails: kernel-shaped trees (hwmon INA3221, power_supply battery, RAPL powercap),
the virtual board's rails through the hook, the FUSE mount and the virtual phone's ADB, and
learning the OPP power tables from them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from dvfs_schema.board import Simulation
from dvfs_schema.loading import load_board, load_model_spec
from governor.power_learning import EnergySample, board_tables, corrected_board, fit_power_tables
from sysfs_backends.power_rails import EnergyMeter, discover_rails, energy_between_samples
from sysfs_backends.transport import LocalTransport
from sysfs_backends.virtual import power_files
from sysfs_backends.virtual.board import VirtualBoard


def put(root: Path, rel: str, value) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"{value}\n")


def link(root: Path, rel: str, target: str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(os.path.relpath(target.lstrip("/"), os.path.dirname(rel.lstrip("/"))))


class Clock:
    """A test's own monotonic clock (ns), so integrated energies have exact expectations."""

    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t


# ---- kernel-shaped trees ---------------------------------------------------------------------------
def ina_tree(root: Path, via_class: bool = True) -> str:
    """An INA3221 as the upstream driver lays it out on a Jetson (channel 3 disabled), and a fan's
    hwmon that is not a power monitor."""
    dev = "/sys/devices/platform/bus@0/c240000.i2c/i2c-1/1-0040"
    hw = f"{dev}/hwmon/hwmon3"
    put(root, f"{hw}/name", "ina3221")
    for n, label, mv, ma in ((1, "VDD_IN", 5072, 1000), (2, "VDD_CPU_GPU_CV", 5064, 250), (3, "VDD_SOC", 5056, 0)):
        put(root, f"{hw}/in{n}_label", label)
        put(root, f"{hw}/in{n}_input", mv)
        put(root, f"{hw}/curr{n}_input", ma)
        put(root, f"{hw}/in{n}_enable", 0 if n == 3 else 1)
    put(root, "/sys/devices/platform/pwm-fan/hwmon/hwmon0/name", "pwmfan")
    if via_class:
        link(root, "/sys/class/hwmon/hwmon0", "/sys/devices/platform/pwm-fan/hwmon/hwmon0")
        link(root, "/sys/class/hwmon/hwmon3", hw)
    else:
        link(root, "/sys/bus/i2c/drivers/ina3221/1-0040", dev)
    return hw


@pytest.mark.parametrize("via_class", [True, False], ids=["hwmon-class", "i2c-driver"])
def test_ina3221_rails_from_labels_volts_and_amps(tmp_path, via_class):
    ina_tree(tmp_path, via_class)
    rails, notes = discover_rails(LocalTransport(tmp_path))
    assert [r.name for r in rails] == ["VDD_IN", "VDD_CPU_GPU_CV"]
    assert rails[0].info.covers == ["board"] and rails[1].info.covers == ["cpu", "gpu"]
    assert any("channel 3 (VDD_SOC) is disabled" in n for n in notes)
    s = EnergyMeter(LocalTransport(tmp_path), rails).sample()
    assert s.rails["VDD_IN"].power_mw == pytest.approx(5072.0)  # 5072 mV x 1000 mA
    assert s.rails["VDD_CPU_GPU_CV"].power_mw == pytest.approx(5064 * 250 / 1000)


def test_power_rail_integrated_over_time(tmp_path):
    hw = ina_tree(tmp_path)
    clock = Clock()
    meter = EnergyMeter(LocalTransport(tmp_path), discover_rails(LocalTransport(tmp_path))[0], clock)
    a = meter.sample()
    put(tmp_path, f"{hw}/curr1_input", 2000)  # 5072 -> 10144 mW
    clock.t += 500_000_000
    b = meter.sample()
    # trapezoid: mean of 5072 and 10144 mW over 0.5 s
    assert energy_between_samples(a, b, "VDD_IN") == pytest.approx((5072 + 10144) / 2 * 0.5 * 1e3)


def battery_tree(root: Path, current_ua: int, status: str = "Discharging", power_uw: int | None = None,
                 charge_uah: int | None = None) -> str:
    d = "/sys/devices/platform/soc/battery/power_supply/battery"
    put(root, f"{d}/type", "Battery")
    put(root, f"{d}/status", status)
    put(root, f"{d}/current_now", current_ua)
    put(root, f"{d}/voltage_now", 4_000_000)
    if power_uw is not None:
        put(root, f"{d}/power_now", power_uw)
    if charge_uah is not None:
        put(root, f"{d}/charge_counter", charge_uah)
    if not (root / "sys/class/power_supply/battery").exists():
        link(root, "/sys/class/power_supply/battery", d)
        put(root, "/sys/devices/platform/soc/usb/power_supply/usb/type", "USB")
        link(root, "/sys/class/power_supply/usb", "/sys/devices/platform/soc/usb/power_supply/usb")
    return d


@pytest.mark.parametrize("current_ua", [-500_000, 500_000], ids=["negative-discharge", "positive-discharge"])
def test_battery_sign_conventions_decided_by_status(tmp_path, current_ua):
    battery_tree(tmp_path, current_ua)
    rails, _ = discover_rails(LocalTransport(tmp_path))
    assert [r.name for r in rails] == ["battery"]  # the usb supply is not a battery
    s = EnergyMeter(LocalTransport(tmp_path), rails).sample()
    assert s.rails["battery"].power_mw == pytest.approx(2000.0)  # 0.5 A x 4 V, whatever the sign
    assert rails[0].convention == ("negative while discharging" if current_ua < 0 else "positive while discharging")


def test_battery_charging_is_no_measurement_and_power_now_wins(tmp_path):
    d = battery_tree(tmp_path, 800_000, status="Charging")
    meter = EnergyMeter(LocalTransport(tmp_path), discover_rails(LocalTransport(tmp_path))[0])
    s = meter.sample()
    assert s.rails["battery"].power_mw is None and "charger feeds the board" in s.rails["battery"].note
    battery_tree(tmp_path, -100, power_uw=3_210_000)  # power_now: the gauge's own figure
    rails, _ = discover_rails(LocalTransport(tmp_path))
    assert EnergyMeter(LocalTransport(tmp_path), rails).sample().rails["battery"].power_mw == pytest.approx(3210.0)
    put(tmp_path, f"{d}/voltage_now", "garbage")
    s = EnergyMeter(LocalTransport(tmp_path), rails).sample()
    assert s.rails["battery"].power_mw is None and "voltage_now: not a number: 'garbage'" in s.rails["battery"].note


def test_battery_coulomb_counter_gives_energy(tmp_path):
    d = battery_tree(tmp_path, -500_000, charge_uah=3_000_000)
    clock = Clock()
    meter = EnergyMeter(LocalTransport(tmp_path), discover_rails(LocalTransport(tmp_path))[0], clock)
    a = meter.sample()
    put(tmp_path, f"{d}/charge_counter", 2_999_000)  # 1000 uAh used at 4 V = 14.4 J
    clock.t += 10_000_000_000
    b = meter.sample()
    assert energy_between_samples(a, b, "battery") == pytest.approx(14.4e6)
    assert b.rails["battery"].power_mw == pytest.approx(1440.0)  # the counted mean over 10 s


def rapl_tree(root: Path, package_uj: int, core_uj: int, range_uj: int = 262_143_328_850) -> None:
    base = "/sys/devices/virtual/powercap/intel-rapl"
    for zone, name, value in (("intel-rapl:0", "package-0", package_uj),
                              ("intel-rapl:0/intel-rapl:0:0", "core", core_uj)):
        put(root, f"{base}/{zone}/name", name)
        put(root, f"{base}/{zone}/energy_uj", value)
        put(root, f"{base}/{zone}/max_energy_range_uj", range_uj)
        if not (root / f"sys/class/powercap/{zone.rsplit('/', 1)[-1]}").exists():
            link(root, f"/sys/class/powercap/{zone.rsplit('/', 1)[-1]}", f"{base}/{zone}")


def test_rapl_counter_wrap(tmp_path):
    rng = 262_143_328_850
    rapl_tree(tmp_path, rng - 1_000_000, 5_000)
    clock = Clock()
    rails, _ = discover_rails(LocalTransport(tmp_path))
    assert [(r.name, r.info.covers) for r in rails] == [("package-0", ["soc"]), ("package-0/core", ["cpu"])]
    meter = EnergyMeter(LocalTransport(tmp_path), rails, clock)
    a = meter.sample()
    rapl_tree(tmp_path, 2_000_000, 1_005_000)  # package wrapped: 1_000_001 to the top, 2_000_000 after
    clock.t += 1_000_000_000
    b = meter.sample()
    assert energy_between_samples(a, b, "package-0") == 3_000_001
    assert energy_between_samples(a, b, "package-0/core") == 1_000_000
    assert b.rails["package-0"].power_mw == pytest.approx(3000.001)


def test_unreadable_counter_is_a_note_and_the_gap_is_not_guessed(tmp_path):
    rapl_tree(tmp_path, 1_000, 1_000)
    meter = EnergyMeter(LocalTransport(tmp_path), discover_rails(LocalTransport(tmp_path))[0], Clock())
    a = meter.sample()
    counter = tmp_path / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj"
    counter.unlink()
    counter.mkdir()  # reading it fails (EISDIR): as root, a mode cannot make a file unreadable
    b = meter.sample()
    assert b.rails["package-0"].power_mw is None and "energy_uj" in b.rails["package-0"].note
    assert energy_between_samples(a, b, "package-0") is None
    counter.rmdir()
    put(tmp_path, counter.relative_to(tmp_path).as_posix(), 9_000)
    c = meter.sample()
    assert energy_between_samples(a, c, "package-0") is None  # across the gap: unknown
    assert energy_between_samples(a, c, "package-0/core") == 0


def test_no_rails_no_meter(tmp_path):
    rails, notes = discover_rails(LocalTransport(tmp_path))
    assert rails == [] and notes == []
    vb = VirtualBoard(tmp_path / "rk", load_board("rk3588"))
    backend = vb.backend(tmp_path / "saved.json")
    assert backend.power_meter() is None and backend.discover().rails == []


# ---- the virtual board's rails --------------------------------------------------------------------
def run_frames(vb, n: int, model: str = "yolo_tiny", seed: int = 0) -> list:
    sim = vb.simulator(load_model_spec(model))
    rng = np.random.default_rng(seed)
    return [vb.kernel.run_frame(sim, None, rng) for _ in range(n)]


def test_virtual_orin_ina3221_reading_is_the_frames_power(tmp_path):
    vb = VirtualBoard(tmp_path / "orin", load_board("orin_nano"))
    meter = vb.backend(tmp_path / "saved.json").power_meter()
    assert [r.name for r in meter.rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    for f in run_frames(vb, 5):
        mw = meter.sample().rails["VDD_IN"].reading.power_mw
        # mA resolution at 5 V: 5 mW in ~5 W
        assert mw * f.latency_ns * 1e-12 == pytest.approx(f.energy_j, rel=2e-3)


def generic_pc(tmp_path) -> VirtualBoard:
    cfg = load_board("generic_pc").model_copy(update={"simulation": Simulation()})
    return VirtualBoard(tmp_path / "pc", cfg)


def test_virtual_pc_rapl_counts_the_modelled_energy_and_wraps(tmp_path):
    vb = generic_pc(tmp_path)
    power_files.set_counter_offset(vb.kernel, power_files.RAPL_RANGE_UJ - 50_000)  # just below the wrap
    meter = vb.backend(tmp_path / "saved.json").power_meter()
    assert {r.name for r in meter.rails} == {"package-0", "package-0/core", "psys"}
    a = meter.sample()
    frames = run_frames(vb, 10, "mobilenet_v2")
    b = meter.sample()
    assert b.rails["psys"].reading.counter_uj < a.rails["psys"].reading.counter_uj  # it wrapped
    modelled_uj = sum(f.energy_j for f in frames) * 1e6
    assert energy_between_samples(a, b, "psys") == pytest.approx(modelled_uj, abs=len(frames) + 1)
    # the package counts the CPU and half the idle power: less than the platform
    assert energy_between_samples(a, b, "package-0") < energy_between_samples(a, b, "psys")


def test_virtual_board_rails_through_the_fuse_mount(tmp_path, drive):
    vb = VirtualBoard(tmp_path / "orin", load_board("orin_nano"))
    backend = drive(vb, tmp_path / "saved.json")
    meter = backend.power_meter()
    assert [r.info.source for r in meter.rails] == ["/sys/class/hwmon/hwmon1"] * 3
    f = run_frames(vb, 1)[0]
    mw = meter.sample().rails["VDD_IN"].reading.power_mw
    assert mw * f.latency_ns * 1e-12 == pytest.approx(f.energy_j, rel=2e-3)


@pytest.fixture
def phone(tmp_path):
    from sysfs_backends.virtual.adb_device import VirtualAdbDevice

    vb = VirtualBoard(tmp_path / "tree", load_board("sd888_phone"))
    with VirtualAdbDevice(vb.root) as dev:
        yield vb, dev


def test_virtual_phone_battery_over_adb(phone, tmp_path):
    from sysfs_backends.android import AndroidBackend
    from sysfs_backends.registry import AdbOptions

    vb, dev = phone
    be = AndroidBackend(load_board("sd888_phone"),
                        AdbOptions(address=dev.address, key_path=str(tmp_path / "keys" / "adbkey")),
                        tmp_path / "saved.json")
    try:
        meter = be.power_meter()
        assert [(r.name, r.info.kind, r.info.quantity) for r in meter.rails] == [("battery", "battery", "energy")]
        a = meter.sample()
        trips = be.transport.round_trips
        frames = run_frames(vb, 60)
        b = meter.sample()
        assert be.transport.round_trips == trips + 1  # every rail in one shell command
        assert b.rails["battery"].reading.power_mw > 0 and meter.rails[0].convention == "negative while discharging"
        modelled_uj = sum(f.energy_j for f in frames) * 1e6
        # the coulomb counter's resolution: 1 uAh at ~4 V is ~14 mJ
        assert energy_between_samples(a, b, "battery") == pytest.approx(modelled_uj, abs=2 * 3.6e-3 * 4.1e6)
        power_files.set_battery_status(vb.kernel, "Charging")
        c = meter.sample()
        assert c.rails["battery"].power_mw is None and "Charging" in c.rails["battery"].note
    finally:
        be.close()


def test_governor_status_reports_measured_energy_per_frame(tmp_path):
    from governor.app import fit_on_virtual_board
    from governor.core import Governor

    board = load_board("sd888_phone")
    vb = VirtualBoard(tmp_path / "phone", board)
    gov = Governor(vb.backend(tmp_path / "saved.json"), board, {"yolo_tiny": fit_on_virtual_board(board, "yolo_tiny")})
    sim = vb.simulator(load_model_spec("yolo_tiny"))
    rng = np.random.default_rng(1)
    energy_j = 0.0
    with gov:
        gov.refresh()  # a window starts here
        for _ in range(80):
            with gov.frame("yolo_tiny", deadline_ms=30.0):
                energy_j += vb.kernel.run_frame(sim, None, rng).energy_j
        time.sleep(0.01)
        gov._next_refresh = 0
        gov.refresh()
        st = gov.status()
    assert st["power_rail"] == "battery" and st["power_mw"] > 0
    assert st["measured_frames"] == 80
    assert st["energy_per_frame_mj"] == pytest.approx(energy_j / 80 * 1e3, abs=2 * 14.8 / 80 + 0.01)


def test_no_power_fields_without_rails(tmp_path):
    from governor.app import fit_on_virtual_board
    from governor.core import Governor

    board = load_board("rk3588")
    vb = VirtualBoard(tmp_path / "rk", board)
    with Governor(vb.backend(tmp_path / "saved.json"), board,
                  {"yolo_tiny": fit_on_virtual_board(board, "yolo_tiny")}) as gov:
        st = gov.status()
    assert "power_mw" not in st and "energy_per_frame_mj" not in st


# ---- learning the tables --------------------------------------------------------------------------
def test_power_tables_learned_from_the_rails(tmp_path):
    """The config's tables are wrong by known factors (CPU x1.3, GPU x0.7); the rails carry the truth."""
    cfg = load_board("orin_nano").model_copy(deep=True)
    cfg.simulation.true_power_scale = {"cpu": 1.3, "gpu": 0.7}
    vb = VirtualBoard(tmp_path / "orin", cfg)
    backend = vb.backend(tmp_path / "saved.json")
    meter = backend.power_meter()
    sims = [vb.simulator(load_model_spec(m)) for m in ("yolo_tiny", "mobilenet_v2")]
    cpus, gpus = cfg.cpu.inference.frequencies_khz, cfg.gpu.frequencies_hz
    rng = np.random.default_rng(0)
    samples = []
    for c in (cpus[0], cpus[6], cpus[12], cpus[-1]):
        for g in gpus:
            backend.apply(cpu_khz=c, gpu_hz=g)
            time.sleep(0.002)  # past the transition
            for sim in sims:
                f = vb.kernel.run_frame(sim, None, rng)
                mw = meter.sample().rails["VDD_IN"].reading.power_mw
                samples.append(EnergySample({"cpu": f.cpu_khz, "gpu": f.gpu_hz},
                                            {"cpu": f.host_busy_ns, "gpu": f.gpu_busy_ns},
                                            f.latency_ns, mw * f.latency_ns * 1e-12))
    backend.restore()
    tables, idle_mw = board_tables(cfg)
    fit = fit_power_tables(samples, tables, idle_mw)
    assert fit.rel_rms_before > 0.05 and fit.rel_rms_after < 0.01
    assert fit.domain_scale["cpu"] == pytest.approx(1.3, rel=0.03)
    assert fit.domain_scale["gpu"] == pytest.approx(0.7, rel=0.03)
    assert fit.scale["gpu"] == pytest.approx([0.7] * 5, rel=0.03)
    for k in (0, 6, 12, 19):  # the CPU OPPs that were measured
        assert fit.scale["cpu"][k] == pytest.approx(1.3, rel=0.03)
    fixed = corrected_board(cfg, fit)
    assert fixed.gpu.power_mw[0] == pytest.approx(cfg.gpu.power_mw[0] * 0.7, rel=0.03)
    # a held-out point (unmeasured CPU OPP): the corrected tables predict what the rail says
    backend.apply(cpu_khz=cpus[9], gpu_hz=gpus[1])
    time.sleep(0.002)
    f = vb.kernel.run_frame(sims[0], None, rng)
    measured = meter.sample().rails["VDD_IN"].reading.power_mw * f.latency_ns * 1e-12
    predicted = float(fixed.frame_energy_j(f.cpu_khz, f.gpu_hz, f.host_busy_ns, f.gpu_busy_ns, f.latency_ns))
    assert predicted == pytest.approx(measured, rel=0.01) and f.energy_j != pytest.approx(measured, rel=0.05)
    backend.restore()


def test_learning_refuses_nothing_to_learn_from():
    tables, idle = board_tables(load_board("orin_nano"))
    with pytest.raises(ValueError, match="no energy samples"):
        fit_power_tables([], tables, idle)
    with pytest.raises(ValueError, match="must be positive"):
        fit_power_tables([EnergySample({"cpu": 115200}, {"cpu": 1e6}, 2e6, 0.0)], tables, idle)


def test_true_power_scale_checked():
    cfg = load_board("orin_nano").model_dump()
    cfg["simulation"]["true_power_scale"] = {"gpu": [1.0, 1.0]}
    with pytest.raises(ValidationError, match="true_power_scale.gpu: one factor per OPP"):
        type(load_board("orin_nano")).model_validate(cfg)
