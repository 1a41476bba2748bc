"""The virtual kernel behaves as real kernels were seen to (asynchronous cpufreq limits, clocks
that cannot reach an OPP, limit conflicts resolved or refused by kernel age), and the backend
reports only what the kernel shows once it has settled."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvfs_schema.loading import load_board
from sysfs_backends.virtual.board import VirtualBoard

CPUFREQ = "sys/devices/system/cpu/cpufreq"
DEVFREQ = "sys/class/devfreq"


def board(name: str, **simulation):
    cfg = load_board(name).model_copy(deep=True)
    for key, value in simulation.items():
        setattr(cfg.simulation, key, value)
    return cfg


def truth(vb: VirtualBoard, rel: str) -> int:
    """The kernel's own answer, read well after any pending work."""
    return int(vb.kernel.read("/" + rel).split()[0])


def test_limit_writes_show_late_as_on_a_real_kernel(tmp_path):
    vb = VirtualBoard(tmp_path / "b", board("sd888_phone", limit_apply_delay_ns=30_000_000))
    pol = f"/{CPUFREQ}/policy7"
    vb.kernel.write(f"{pol}/scaling_max_freq", "1305600")
    vb.kernel.write(f"{pol}/scaling_min_freq", "1305600")
    # read straight back: the old limits and frequency (the race the real kernel has)
    assert vb.kernel.read(f"{pol}/scaling_max_freq").strip() == "2841600"
    assert vb.kernel.read(f"{pol}/cpuinfo_cur_freq").strip() == "2841600"
    time.sleep(0.04)
    assert vb.kernel.read(f"{pol}/scaling_max_freq").strip() == "1305600"
    assert vb.kernel.read(f"{pol}/cpuinfo_cur_freq").strip() == "1305600"


def test_work_another_process_left_pending_lands_at_this_ones_read(tmp_path):
    """Each process of a board (the daemon's backend, the FUSE mount, the phone's shell) has its
    own kernel object; a read parses the shared state again only when its version changed. A
    reader that looked before another's write (nothing pending then) must see the work that
    write left pending, and land it once due."""
    vb = VirtualBoard(tmp_path / "b", board("sd888_phone", limit_apply_delay_ns=30_000_000))
    pol = f"/{CPUFREQ}/policy7"
    reader = type(vb.kernel)(vb.root)  # another process's view of the same tree
    assert reader.read(f"{pol}/scaling_max_freq").strip() == "2841600"  # nothing pending: seen
    vb.kernel.write(f"{pol}/scaling_max_freq", "1305600")  # the other process writes
    assert reader.read(f"{pol}/scaling_max_freq").strip() == "2841600"  # not due yet
    time.sleep(0.04)
    assert reader.read(f"{pol}/scaling_max_freq").strip() == "1305600"  # landed by this reader


def test_apply_reports_the_settled_frequency_not_the_stale_read(tmp_path, drive):
    """Issue: a read-back in the same batch as the writes was taken as the truth, so the old
    frequency was reported as in force and called a thermal cap."""
    # a slow work item (0.15 s: longer than four writes take even on a loaded machine), within the
    # domain's settle time (transition latency + margin)
    cfg = board("sd888_phone", limit_apply_delay_ns=150_000_000)
    cfg.cpu.policies["policy7"].transition_latency_ns = 300_000_000
    vb = VirtualBoard(tmp_path / "b", cfg)
    be = drive(vb, tmp_path / "s.json")
    pairs = [(1_305_600, 443_000_000), (2_841_600, 840_000_000), (844_800, 315_000_000),
             (2_035_200, 607_000_000), (1_305_600, 840_000_000)]
    for cpu, gpu in pairs:
        res = be.apply(cpu_khz=cpu, gpu_hz=gpu)
        time.sleep(0.01)
        kernel = {"cpu": truth(vb, f"{CPUFREQ}/policy7/cpuinfo_cur_freq"),
                  "gpu": truth(vb, "sys/class/kgsl/kgsl-3d0/gpuclk")}
        assert res.effective == kernel == {"cpu": cpu, "gpu": gpu}
        assert res.conditions == {"cpu": "ok", "gpu": "ok"} and not res.capped, res.notes
        assert res.round_trips > 1  # the first read-back was stale: it waited for the work item
    be.restore()


def test_kernel_slower_than_the_settle_time_is_reported_as_pending_not_capped(tmp_path, drive):
    vb = VirtualBoard(tmp_path / "b", board("sd888_phone", limit_apply_delay_ns=200_000_000))
    be = drive(vb, tmp_path / "s.json")
    be.apply(cpu_khz=1_305_600)
    time.sleep(0.25)
    res = be.apply(cpu_khz=2_035_200)
    assert res.effective == {"cpu": 1_305_600}  # what the kernel shows: the old frequency runs
    assert res.conditions == {"cpu": "pending"} and not res.capped
    time.sleep(0.25)
    assert be.state()["cpu"].cur == 2_035_200
    be.restore()


def test_clock_that_cannot_reach_an_opp_is_unreachable_not_capped(tmp_path, drive):
    vb = VirtualBoard(tmp_path / "b", board("rk3588", unreachable_cpu_khz=[1_416_000],
                                            unreachable_gpu_hz=[600_000_000]))
    be = drive(vb, tmp_path / "s.json")
    res = be.apply(cpu_khz=1_416_000, gpu_hz=600_000_000)
    pol = f"{CPUFREQ}/policy4"
    # the last target says 1416000; the clock's own reading is the truth
    assert truth(vb, f"{pol}/scaling_cur_freq") == 1_416_000
    assert truth(vb, f"{pol}/cpuinfo_cur_freq") == 1_200_000
    assert truth(vb, f"{DEVFREQ}/fb000000.gpu/target_freq") == 600_000_000
    assert res.effective == {"cpu": 1_200_000, "gpu": 500_000_000}
    assert res.conditions == {"cpu": "unreachable", "gpu": "unreachable"} and not res.capped
    assert res.unreachable == {"cpu": 1_200_000, "gpu": 500_000_000}
    assert any("cannot reach" in n for n in res.notes)
    # asking again writes nothing: the setpoint is already the request
    assert be.apply(cpu_khz=1_416_000, gpu_hz=600_000_000).writes == 0
    assert be.state()["cpu"].cur == 1_200_000
    be.restore()


def test_thermal_cap_is_capped_with_the_kernel_limits(tmp_path, drive):
    vb = VirtualBoard(tmp_path / "b", board("pixel6_phone"))
    be = drive(vb, tmp_path / "s.json")
    vb.kernel.force_thermal_cap(True)
    res = be.apply(cpu_khz=2_802_000, gpu_hz=848_000_000)
    assert res.conditions == {"cpu": "capped", "gpu": "capped"} and res.capped
    assert res.limits["cpu"][1] == 1_826_000 and res.limits["gpu"][1] == 471_000_000
    be.restore()


def test_without_cpuinfo_cur_freq_the_last_target_is_used_and_said(tmp_path, drive):
    vb = VirtualBoard(tmp_path / "b", board("rk3588", cpu_clock_readback=False))  # acpi-cpufreq on I/O
    assert not (vb.root / CPUFREQ / "policy4" / "cpuinfo_cur_freq").exists()
    be = drive(vb, tmp_path / "s.json")
    assert be.state()["cpu"].cur == 2_400_000  # before discovery too (save() reads state first)
    found = be.discover()
    assert found.domains["cpu"].cur_source == "last_target"
    assert found.domains["gpu"].cur_source == "hardware"
    assert any("scaling_cur_freq" in n and "not the clock" in n for n in found.notes)
    assert be.apply(cpu_khz=1_416_000).effective == {"cpu": 1_416_000}
    be.restore()


def test_modern_kernel_resolves_a_min_above_the_max(tmp_path):
    vb = VirtualBoard(tmp_path / "b", board("sd888_phone", limit_apply_delay_ns=0))
    pol = f"/{CPUFREQ}/policy7"
    vb.kernel.write(f"{pol}/scaling_max_freq", "1400000")  # not an OPP: shown rounded down
    assert vb.kernel.read(f"{pol}/scaling_max_freq").strip() == "1305600"
    vb.kernel.write(f"{pol}/scaling_min_freq", "2841600")  # above the max: accepted
    # the max request wins; no OPP at 1400000, so the max moves up to the next one: both show it
    assert vb.kernel.read(f"{pol}/scaling_min_freq").strip() == "1420800"
    assert vb.kernel.read(f"{pol}/scaling_max_freq").strip() == "1420800"
    with pytest.raises(OSError) as info:
        vb.kernel.write(f"{pol}/scaling_min_freq", "fast")
    assert info.value.errno == errno.EINVAL


def test_legacy_kernel_refuses_crossing_limits_and_the_backend_never_crosses(tmp_path, drive):
    vb = VirtualBoard(tmp_path / "b", board("sd888_phone", legacy_limits=True))
    be = drive(vb, tmp_path / "s.json")
    be.apply(cpu_khz=1_305_600)
    with pytest.raises(OSError) as info:
        vb.kernel.write(f"/{CPUFREQ}/policy7/scaling_min_freq", "2841600")
    assert info.value.errno == errno.EINVAL
    for c, g in [(2_841_600, 840_000_000), (844_800, 315_000_000), (2_035_200, 607_000_000),
                 (844_800, 840_000_000), (2_841_600, 315_000_000)]:
        res = be.apply(cpu_khz=c, gpu_hz=g)
        assert res.effective == {"cpu": c, "gpu": g} and res.conditions == {"cpu": "ok", "gpu": "ok"}
    be.restore()


def test_userspace_governor_at_boot_has_a_setpoint(tmp_path):
    cfg = board("rk3588")
    cfg.cpu.policies["policy4"].default_governor = "userspace"
    cfg.gpu.default_governor = "userspace"
    vb = VirtualBoard(tmp_path / "b", cfg)
    assert truth(vb, f"{CPUFREQ}/policy4/scaling_setspeed") == 2_400_000
    # devfreq's userspace governor has no request until one is written
    assert vb.kernel.read(f"/{DEVFREQ}/fb000000.gpu/userspace/set_freq").strip() == "undefined"
    assert truth(vb, f"{DEVFREQ}/fb000000.gpu/cur_freq") == 1_000_000_000
    vb.kernel.write(f"/{CPUFREQ}/policy4/scaling_setspeed", "1000000")  # rounds up to the table
    assert truth(vb, f"{CPUFREQ}/policy4/scaling_setspeed") == 1_008_000
    assert truth(vb, f"{CPUFREQ}/policy4/cpuinfo_cur_freq") == 1_008_000


KILLER = """
import itertools, sys
from sysfs_backends.virtual.board import VirtualKernel
k = VirtualKernel(sys.argv[1])
pol = "/sys/devices/system/cpu/cpufreq/policy7"
print("go", flush=True)
for f in itertools.cycle(["844800", "2841600", "1305600"]):
    k.write(pol + "/scaling_max_freq", f)
    k.write(pol + "/scaling_min_freq", f)
"""


def test_sigkill_never_leaves_an_empty_or_torn_attribute(tmp_path):
    vb = VirtualBoard(tmp_path / "b", board("sd888_phone", limit_apply_delay_ns=0))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for k in range(8):
        p = subprocess.Popen([sys.executable, "-c", KILLER, str(vb.root)], stdout=subprocess.PIPE, env=env)
        assert p.stdout.readline().strip() == b"go"
        time.sleep(0.05 + 0.013 * k)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for f in (vb.root / CPUFREQ / "policy7").iterdir():
            if f.is_file() and not f.name.startswith("."):
                text = f.read_text()
                assert text.endswith("\n") and text.strip(), f"{f.name}: {text!r}"
    be = vb.backend(state_file=tmp_path / "s.json")
    assert be.state()["cpu"].cur in (844_800, 2_841_600, 1_305_600)


def test_governor_plans_with_the_frequency_that_runs_not_an_unreachable_one(tmp_path):
    from governor.app import fit_on_virtual_board
    from governor.core import Governor

    cfg = board("rk3588", unreachable_cpu_khz=[2_400_000, 2_352_000], unreachable_gpu_hz=[1_000_000_000])
    vb = VirtualBoard(tmp_path / "b", cfg)
    gov = Governor(vb.backend(state_file=tmp_path / "s.json"), vb.board,
                   {"yolo": fit_on_virtual_board(vb.board, "yolo_tiny")})
    with gov:
        seen = []
        for _ in range(5):
            d = gov.before_frame("yolo", 1.0)  # infeasible: asks for the fastest pair
            seen.append(d.cpu_khz)
            # every answer names frequencies the clocks really run, from the first frame on
            assert d.cpu_khz == truth(vb, f"{CPUFREQ}/policy4/cpuinfo_cur_freq")
            assert d.gpu_hz == truth(vb, f"{DEVFREQ}/fb000000.gpu/cur_freq") == 900_000_000
            gov.after_frame(d.frame, 30.0)
        assert seen == [2_304_000] * 5 and gov.status()["capped"] is False


@pytest.mark.parametrize("mechanism", ["userspace", "minmax"])
def test_devfreq_userspace_without_a_request_comes_back_at_its_frequency(tmp_path, mechanism):
    """The arm64 guest's devfreq device boots under userspace with set_freq 'undefined': restore
    must bring its clock back (a written request for the frequency it ran, since no write can make
    the file say 'undefined' again)."""
    cfg = board("rk3588")
    cfg.gpu.default_governor = "userspace"
    cfg.gpu.mechanism = mechanism
    vb = VirtualBoard(tmp_path / "b", cfg)
    gpu = f"{DEVFREQ}/fb000000.gpu"
    assert vb.kernel.read(f"/{gpu}/userspace/set_freq").strip() == "undefined"
    assert truth(vb, f"{gpu}/cur_freq") == 1_000_000_000
    be = vb.backend(state_file=tmp_path / "s.json")
    be.apply(gpu_hz=400_000_000)
    assert truth(vb, f"{gpu}/cur_freq") == 400_000_000
    be.restore()
    assert truth(vb, f"{gpu}/cur_freq") == 1_000_000_000
    assert vb.kernel.read(f"/{gpu}/governor").strip() == "userspace"
