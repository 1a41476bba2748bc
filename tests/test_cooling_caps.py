"""Thermal caps read from the kernel's cooling devices (/sys/class/thermal/cooling_deviceN), on the
virtual board whose kernel keeps their ``cur_state`` on the thermal cap in force: the layout and
state mapping, the backend's discovery, and a pinned governor that sees a cap's onset and lift at
every read-back instead of asking past its own pin. Stores are recorded on their way to the kernel
with the cap in force then (tests/test_governor_dynamics.py's StoreLog)."""

from __future__ import annotations

import errno
import math
import time
from pathlib import Path

import pytest

from dvfs_schema.loading import load_board
from governor.app import fit_on_virtual_board
from governor.config import GovernorSettings
from governor.core import Governor
from sysfs_backends.virtual.board import VirtualBoard, _force_write, build_tree
from tests.test_governor_dynamics import StoreLog

THERMAL = "/sys/class/thermal"


@pytest.fixture(scope="module")
def estimator():
    return fit_on_virtual_board(load_board("sd888_phone"), "yolo_tiny")


def cooling_dirs(root: Path) -> dict[str, Path]:
    base = root / THERMAL.lstrip("/")
    return {(d / "type").read_text().strip(): d for d in sorted(base.iterdir())}


def governed(root: Path, estimator, cooling: bool, **settings):
    board = load_board("sd888_phone")
    build_tree(root, board, cooling_devices=cooling)
    vb = VirtualBoard(root)
    backend = vb.backend(root.parent / f"{root.name}.json")
    log = StoreLog(vb.kernel)
    backend.transport.hook = log
    gov = Governor(backend, board, {"yolo": estimator}, GovernorSettings(state_refresh_s=3600.0, **settings))
    return gov, vb, log


def test_cooling_devices_laid_out_as_the_kernels_and_follow_the_cap(tmp_path):
    board = load_board("sd888_phone")
    vb = VirtualBoard(tmp_path / "b", board)
    devs = cooling_dirs(vb.root)
    cpu_pol = board.cpu.policies[board.cpu.inference_policy]
    cpu_dev = devs[f"cpufreq-cpu{cpu_pol.cpus[0]}"]
    gpu_dev = devs[f"devfreq-{board.gpu.node}"]
    cpu_table, gpu_table = board.domain_tables["cpu"], board.domain_tables["gpu"]
    assert int((cpu_dev / "max_state").read_text()) == len(cpu_table) - 1
    assert int((gpu_dev / "max_state").read_text()) == len(gpu_table) - 1
    assert (cpu_dev / "cur_state").read_text() == "0\n"
    vb.kernel.force_thermal_cap(True)
    sim = board.simulation
    cpu_cap = max(f for f in cpu_table if f <= sim.thermal_cap_cpu_khz)
    gpu_cap = max(f for f in gpu_table if f <= sim.thermal_cap_gpu_hz)
    # state s rules out the s highest frequencies
    assert int((cpu_dev / "cur_state").read_text()) == sum(f > cpu_cap for f in cpu_table) > 0
    assert int((gpu_dev / "cur_state").read_text()) == sum(f > gpu_cap for f in gpu_table) > 0
    # read-only for users, as the kernel's files are (no store goes there)
    with pytest.raises(OSError) as exc:
        vb.kernel.write(f"{THERMAL}/{cpu_dev.name}/cur_state", "0")
    assert exc.value.errno == errno.EACCES
    state = vb.backend(tmp_path / "s.json").state()
    assert (state["cpu"].cooling_cap, state["gpu"].cooling_cap) == (cpu_cap, gpu_cap)
    assert state["mem"].cooling_cap is None  # no cooling device maps to the memory bus
    vb.kernel.force_thermal_cap(False)
    assert (cpu_dev / "cur_state").read_text() == "0\n"
    state = vb.backend(tmp_path / "s2.json").state()
    assert (state["cpu"].cooling_cap, state["gpu"].cooling_cap) == (cpu_table[-1], gpu_table[-1])


def test_older_kernels_names_and_a_table_mismatch(tmp_path):
    """``thermal-cpufreq-N`` counts policies in order (first CPU); a device whose state count does
    not fit the domain's table is not used, and discovery says so."""
    board = load_board("sd888_phone")
    vb = VirtualBoard(tmp_path / "b", board)
    devs = cooling_dirs(vb.root)
    policies = sorted(board.cpu.policies, key=lambda p: int(p[6:]))
    ordinal = policies.index(board.cpu.inference_policy)
    cpu_pol = board.cpu.policies[board.cpu.inference_policy]
    _force_write(devs[f"cpufreq-cpu{cpu_pol.cpus[0]}"] / "type", f"thermal-cpufreq-{ordinal}")
    _force_write(devs[f"devfreq-{board.gpu.node}"] / "max_state", 3)
    d = vb.backend(tmp_path / "s.json").discover()
    assert d.domains["cpu"].cooling_devices and d.states["cpu"].cooling_cap == board.domain_tables["cpu"][-1]
    assert d.domains["gpu"].cooling_devices == [] and d.states["gpu"].cooling_cap is None
    assert any("not used for caps" in n and "gpu" in n for n in d.notes), d.notes


def test_pinned_governor_sees_onset_and_lift_from_the_cooling_device(tmp_path, estimator):
    """Pinned limits under the cap hide it from scaling_max_freq/max_freq; the cooling device does
    not: the lift shows at the next read-back with no recheck (set to an hour here), and no store
    goes above the cap in force."""
    gov, vb, log = governed(tmp_path / "b", estimator, True, cap_recheck_s=3600.0)
    sim = vb.board.simulation
    with gov:
        tight = float(gov._grid("yolo", None).latency_ms[0].min()) * 1.05
        d = gov.before_frame("yolo", tight)
        gov.after_frame(d.frame, d.predicted_ms)
        top = (d.cpu_khz, d.gpu_hz)
        vb.kernel.force_thermal_cap(True)
        gov.refresh()  # onset, from the cooling devices (our pin stands above the cap here too)
        assert gov.status()["capped"]
        for deadline in (tight * 3, tight, tight * 5):  # loose deadlines pin under the cap
            d = gov.before_frame("yolo", deadline)
            assert d.cpu_khz <= sim.thermal_cap_cpu_khz and d.gpu_hz <= sim.thermal_cap_gpu_hz
            gov.after_frame(d.frame, d.predicted_ms)
        cpu, gpu = gov.domains.index("cpu"), gov.domains.index("gpu")
        assert not math.isfinite(gov._blind_since[cpu]) and not math.isfinite(gov._blind_since[gpu])
        assert log.above_cap() == [], log.above_cap()
        vb.kernel.force_thermal_cap(False)
        gov.refresh()  # the lift, though our pin hides it in the limits
        assert math.isinf(gov._caps[cpu]) and math.isinf(gov._caps[gpu])
        d = gov.before_frame("yolo", tight)
        assert (d.cpu_khz, d.gpu_hz) == top
        gov.after_frame(d.frame, d.predicted_ms)
        vb.kernel.force_thermal_cap(True)
        time.sleep(gov.settings.lower_dwell_ms / 1e3)  # a cheaper point is taken once the dwell is over
        d = gov.before_frame("yolo", tight * 3)  # its write's read-back shows the onset
        gov.after_frame(d.frame, d.predicted_ms)
        d = gov.before_frame("yolo", tight)
        assert d.cpu_khz <= sim.thermal_cap_cpu_khz and d.gpu_hz <= sim.thermal_cap_gpu_hz
        gov.after_frame(d.frame, d.predicted_ms)
        assert log.above_cap() == [], log.above_cap()  # (restore, after, puts the original max back)


def test_without_cooling_devices_the_pinned_recheck_stays(tmp_path, estimator):
    """A kernel without cooling devices: the domain reports no cooling cap, a pin under a known cap
    starts the recheck timer, and the lift is seen only by asking past it once it is due."""
    gov, vb, log = governed(tmp_path / "b", estimator, False, cap_recheck_s=3600.0)
    with gov:
        assert gov.backend.state()["cpu"].cooling_cap is None
        tight = float(gov._grid("yolo", None).latency_ms[0].min()) * 1.05
        d = gov.before_frame("yolo", tight)
        gov.after_frame(d.frame, d.predicted_ms)
        top = (d.cpu_khz, d.gpu_hz)
        vb.kernel.force_thermal_cap(True)
        gov.refresh()
        d = gov.before_frame("yolo", tight * 3)
        gov.after_frame(d.frame, d.predicted_ms)
        cpu = gov.domains.index("cpu")
        assert math.isfinite(gov._blind_since[cpu])  # the pinned recheck is running
        vb.kernel.force_thermal_cap(False)
        gov.refresh()
        d = gov.before_frame("yolo", tight)
        assert (d.cpu_khz, d.gpu_hz) != top  # the lift is hidden by our pin until the recheck
        gov.after_frame(d.frame, d.predicted_ms)
