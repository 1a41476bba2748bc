"""The memory clock as a third domain: devfreq DDR node (RK3588 dmc, userspace), a bus-bandwidth
node in MB/s (SD888 soc:qcom,gpubw, pinned limits) and Jetson's EMC behind the BPMP debugfs clock
interface (Orin Nano, locked rate); through the Linux backend on the virtual kernel's files, on its
FUSE mount, and over ADB to the virtual phone. Boards are the bundled ones with the memory sections
prepared for them (written into tmp folders until the bundled YAMLs carry them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from dvfs_schema.loading import load_board, resolve
from sysfs_backends.android import AndroidBackend
from sysfs_backends.base import BackendError
from sysfs_backends.registry import AdbOptions
from sysfs_backends.state_file import StateFileError
from sysfs_backends.virtual.adb_device import VirtualAdbDevice
from sysfs_backends.virtual.board import VirtualBoard

MEMORY = {
    "rk3588": {"kind": "devfreq", "node": "dmc", "mechanism": "userspace",
               "frequencies_hz": [528000000, 1068000000, 1560000000, 2112000000],
               "power_mw": [260.0, 430.0, 610.0, 860.0], "transition_latency_ns": 1000000,
               "actuation_latency_ns": 8000000,
               "governors": ["dmc_ondemand", "userspace", "powersave", "performance", "simple_ondemand"],
               "default_governor": "dmc_ondemand"},
    "sd888_phone": {"kind": "devfreq", "node": "soc:qcom,gpubw", "mechanism": "minmax", "unit": "MB/s",
                    "frequencies_hz": [762, 1720, 2929, 3879, 5161, 6515, 8136],
                    "power_mw": [110.0, 170.0, 250.0, 320.0, 410.0, 520.0, 640.0],
                    "transition_latency_ns": 1000000, "actuation_latency_ns": 8000000,
                    "governors": ["bw_vbif", "performance", "powersave", "userspace"],
                    "default_governor": "bw_vbif"},
    "orin_nano": {"kind": "bpmp_emc", "node": "emc", "mechanism": "locked",
                  "frequencies_hz": [204000000, 665600000, 2133000000, 3199000000],
                  "power_mw": [280.0, 520.0, 1250.0, 1750.0], "transition_latency_ns": 1000000,
                  "actuation_latency_ns": 8000000, "governors": [], "default_governor": None},
}
MEM_CAP = {"rk3588": 1068000000, "sd888_phone": 2929, "orin_nano": 665600000}
MEM_DIR = {"rk3588": "sys/class/devfreq/dmc", "sd888_phone": "sys/class/devfreq/soc:qcom,gpubw",
           "orin_nano": "sys/kernel/debug/bpmp/debug/clk/emc"}
BOARDS = list(MEMORY)


def board_yaml(tmp_path: Path, name: str) -> Path:
    """The bundled board plus its memory section (and a thermal cap on memory)."""
    raw = yaml.safe_load(resolve("boards", name).read_text())
    raw["memory"] = MEMORY[name]
    raw["simulation"]["thermal_cap_mem_hz"] = MEM_CAP[name]
    out = tmp_path / f"{name}-mem.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def files_of(root: Path) -> dict[str, str]:
    """Every attribute of the board's domains as the kernel shows it (to compare before/after)."""
    time.sleep(0.01)  # past cpufreq's asynchronous limit update
    out = {}
    for top in ("sys/devices/system/cpu/cpufreq", "sys/class/devfreq", "sys/kernel/debug", "sys/class/kgsl"):
        for dirpath, _, names in os.walk(root / top):
            for n in names:
                p = Path(dirpath) / n
                if not n.startswith(".") and os.access(p, os.R_OK) and "trans_stat" not in n:
                    out[str(p.relative_to(root))] = p.read_text().strip()
    return out


@pytest.fixture
def three(tmp_path, drive):
    def make(name: str):
        vb = VirtualBoard(tmp_path / name, load_board(board_yaml(tmp_path, name)))
        return vb, drive(vb, tmp_path / f"{name}.state.json")
    return make


def triples(board) -> list[dict[str, int]]:
    c, g, m = (list(d.frequencies) for d in board.domains)
    return [{"cpu": c[0], "gpu": g[0], "mem": m[0]}, {"cpu": c[-1], "gpu": g[1], "mem": m[-1]},
            {"cpu": c[len(c) // 2], "gpu": g[-1], "mem": m[1]}, {"mem": m[2]}]


@pytest.mark.parametrize("name", BOARDS)
def test_discovery_finds_three_domains(three, name):
    vb, be = three(name)
    found = be.discover()
    assert list(found.domains) == ["cpu", "gpu", "mem"]
    mem = found.domains["mem"]
    spec = MEMORY[name]
    assert (mem.kind, mem.mechanism, mem.unit) == (spec["kind"], spec["mechanism"], spec.get("unit", "Hz"))
    assert mem.frequencies == spec["frequencies_hz"]
    assert found.states["mem"].cur == spec["frequencies_hz"][-1]
    want = "bpmp" if name == "orin_nano" else spec["default_governor"]
    assert found.states["mem"].governor == want


@pytest.mark.parametrize("name", BOARDS)
def test_triples_applied_read_back_and_restored_exactly(three, name):
    vb, be = three(name)
    before = files_of(vb.root)
    for t in triples(vb.board):
        res = be.apply(t)
        assert res.effective == res.target == t, res.notes
        assert set(res.conditions.values()) == {"ok"}
        mem_dir = vb.root / MEM_DIR[name]
        shown = (mem_dir / ("rate" if name == "orin_nano" else "cur_freq")).read_text().strip()
        assert int(shown) == t["mem"]
    if name == "orin_nano":
        assert (vb.root / MEM_DIR[name] / "mrq_rate_locked").read_text().strip() == "1"
    elif name == "sd888_phone":  # pinned limits in MB/s
        assert (vb.root / MEM_DIR[name] / "max_freq").read_text().strip() == str(t["mem"])
    else:
        assert (vb.root / MEM_DIR[name] / "governor").read_text().strip() == "userspace"
    # the keyword form names the memory domain too
    m = vb.board.domain("mem").frequencies
    assert be.apply(mem_hz=m[0]).effective == {"mem": m[0]}
    be.restore()
    assert files_of(vb.root) == before


@pytest.mark.parametrize("name", BOARDS)
def test_thermal_cap_on_memory_is_capped_not_ok(three, name):
    vb, be = three(name)
    top = vb.board.domain("mem").frequencies[-1]
    vb.kernel.force_thermal_cap(True)
    res = be.apply({"mem": top})
    assert res.conditions["mem"] == "capped"
    assert res.effective["mem"] == MEM_CAP[name] and res.limits["mem"][1] == MEM_CAP[name]
    assert any("mem:" in n and "cap" in n for n in res.notes)
    vb.kernel.force_thermal_cap(False)
    assert be.apply({"mem": top}).conditions["mem"] == "ok"
    be.restore()


def test_bpmp_rate_needs_the_lock_and_restore_puts_back_a_locked_original(tmp_path):
    vb = VirtualBoard(tmp_path / "orin", load_board(board_yaml(tmp_path, "orin_nano")))
    emc = "/" + MEM_DIR["orin_nano"]
    # unlocked, a rate written from Linux does not hold: the firmware's DVFS keeps its choice
    vb.kernel.write(f"{emc}/rate", "204000000")
    assert vb.kernel.read(f"{emc}/rate").strip() == "3199000000"
    with pytest.raises(OSError):
        vb.kernel.write(f"{emc}/mrq_rate_locked", "2")
    # someone (jetson_clocks-like) left it locked at 2133 MHz: that is the original to come back
    vb.kernel.write(f"{emc}/mrq_rate_locked", "1")
    vb.kernel.write(f"{emc}/rate", "2133000000")
    before = files_of(vb.root)
    be = vb.backend(tmp_path / "s.json")
    assert be.apply({"mem": 665_600_000}).effective == {"mem": 665_600_000}
    saved = json.loads((tmp_path / "s.json").read_text())["domains"]["mem"]
    assert saved == {"governor": "locked", "min": 204000000, "max": 3199000000, "setpoint": 2133000000,
                     "kind": "bpmp_emc"}
    be.restore()
    assert files_of(vb.root) == before
    # the kernel's defaults for a BPMP clock: unlocked, the firmware's rate
    be2 = vb.backend(tmp_path / "s2.json")
    be2.restore_defaults()
    assert vb.kernel.read(f"{emc}/mrq_rate_locked").strip() == "0"
    assert vb.kernel.read(f"{emc}/rate").strip() == "3199000000"


CHILD = textwrap.dedent("""
    import sys, time
    from sysfs_backends.virtual.board import VirtualBoard
    vb = VirtualBoard(sys.argv[1])
    be = vb.backend(sys.argv[2])
    be.claim()
    c, g, m = (d.frequencies for d in vb.board.domains)
    res = be.apply({"cpu": c[0], "gpu": g[0], "mem": m[0]})
    assert set(res.conditions.values()) == {"ok"}, res
    print("applied", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("name", ["sd888_phone", "orin_nano", "rk3588"])
def test_sigkill_while_pinned_then_restore_gives_exact_originals(tmp_path, name):
    vb = VirtualBoard(tmp_path / name, load_board(board_yaml(tmp_path, name)))
    state = tmp_path / "state.json"
    before = files_of(vb.root)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(vb.root), str(state)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "applied", child.stderr.read()
        pinned = files_of(vb.root)
        assert pinned != before
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert json.loads(state.read_text())["domains"]["mem"]["kind"] == MEMORY[name]["kind"]
    done = vb.backend(state).recover_crashed()
    assert any(d.startswith("mem:") for d in done)
    assert files_of(vb.root) == before and not state.exists()


def test_state_file_before_the_memory_domain_still_restores(tmp_path):
    """A state file written before mem/kind existed (cpu and gpu only, no ``kind``) is valid."""
    vb = VirtualBoard(tmp_path / "rk", load_board(board_yaml(tmp_path, "rk3588")))
    be = vb.backend(tmp_path / "s.json")
    be.apply({"cpu": 1_416_000, "gpu": 600_000_000})
    old = json.loads((tmp_path / "s.json").read_text())
    for d in old["domains"].values():
        del d["kind"]
    old["domains"].pop("mem")
    (tmp_path / "s.json").write_text(json.dumps(old))
    be.release()
    fresh = vb.backend(tmp_path / "s.json")
    done = fresh.recover_crashed()
    assert done and not any(d.startswith("mem:") for d in done)
    assert vb.kernel.read("/sys/class/devfreq/fb000000.gpu/governor").strip() == "simple_ondemand"


def test_state_file_of_another_domain_kind_is_refused(tmp_path):
    vb = VirtualBoard(tmp_path / "orin", load_board(board_yaml(tmp_path, "orin_nano")))
    be = vb.backend(tmp_path / "s.json")
    be.apply({"mem": 204_000_000})
    raw = json.loads((tmp_path / "s.json").read_text())
    raw["domains"]["mem"]["kind"] = "devfreq"
    (tmp_path / "s.json").write_text(json.dumps(raw))
    be.release()
    with pytest.raises(StateFileError, match="saved the mem domain as 'devfreq'.*'bpmp_emc'"):
        vb.backend(tmp_path / "s.json").recover_crashed()


def test_apply_arguments_are_checked(tmp_path):
    vb = VirtualBoard(tmp_path / "plain", load_board("pixel6_phone"))  # no memory section
    be = vb.backend(tmp_path / "s.json")
    with pytest.raises(TypeError, match="dict of domain -> frequency"):
        be.apply(1_416_000)
    with pytest.raises(BackendError, match="no mem domain"):
        be.apply({"mem": 528_000_000})
    with pytest.raises(ValueError, match="cpu given twice"):
        be.apply({"cpu": 1_416_000}, cpu_khz=408_000)
    be.restore()


def test_debugfs_directory_planted_as_symlink_out_of_tree_is_refused(tmp_path):
    vb = VirtualBoard(tmp_path / "orin", load_board(board_yaml(tmp_path, "orin_nano")))
    emc = vb.root / MEM_DIR["orin_nano"]
    outside = tmp_path / "elsewhere"
    emc.rename(outside)
    emc.symlink_to(outside)
    with pytest.raises(BackendError, match="outside the sysfs tree"):
        vb.backend(tmp_path / "s.json").discover()
    assert (outside / "rate").read_text().strip() == "3199000000"


def test_frame_runs_at_the_memory_clock_in_force(tmp_path):
    from dvfs_schema.loading import load_model_spec

    vb = VirtualBoard(tmp_path / "rk", load_board(board_yaml(tmp_path, "rk3588")))
    be = vb.backend(tmp_path / "s.json")
    be.apply({"mem": 528_000_000})
    sim = vb.simulator(load_model_spec("yolo_tiny"))
    low = vb.kernel.run_frame(sim)
    be.apply({"mem": 2_112_000_000})
    high = vb.kernel.run_frame(sim)
    be.restore()
    assert (low.mem_hz, high.mem_hz) == (528_000_000, 2_112_000_000)
    for f in (low, high):  # the memory's power at the clock in force is part of the frame's energy
        args = (f.cpu_khz, f.gpu_hz, f.host_busy_ns, f.gpu_busy_ns, f.latency_ns)
        assert f.energy_j == pytest.approx(float(vb.board.frame_energy_j(*args, mem_hz=f.mem_hz)))
        assert f.energy_j > float(vb.board.frame_energy_j(*args)) + 250e-3 * f.latency_ns * 1e-9


def test_sd888_bus_node_over_adb(tmp_path):
    vb = VirtualBoard(tmp_path / "tree", load_board(board_yaml(tmp_path, "sd888_phone")))
    before = files_of(vb.root)
    with VirtualAdbDevice(vb.root) as dev:
        opts = AdbOptions(address=dev.address, key_path=str(tmp_path / "keys" / "adbkey"),
                          connect_timeout_s=5, command_timeout_s=5)
        be = AndroidBackend(vb.board, opts, tmp_path / "saved.json")
        try:
            found = be.discover()
            assert found.domains["mem"].unit == "MB/s" and found.domains["mem"].node == "soc:qcom,gpubw"
            trips = be.transport.round_trips
            res = be.apply({"cpu": 1_305_600, "gpu": 443_000_000, "mem": 1720})
            assert res.effective == {"cpu": 1_305_600, "gpu": 443_000_000, "mem": 1720}, res.notes
            assert be.transport.round_trips - trips <= 2  # one batch (+ a settle re-read at most)
            assert vb.kernel.read("/sys/class/devfreq/soc:qcom,gpubw/cur_freq").strip() == "1720"
            be.restore()
        finally:
            be.close()
    assert files_of(vb.root) == before
