"""Boards without a GPU (CPU-only inference), end to end: the profile-format extension
(``frequencies.gpu_hz: []``, ``runs[].gpu_hz: null``), fit/estimate/grid/plan, the governor in
process and as a daemon on the virtual Raspberry Pi 5, and `dvfs-gov status`/`restore` on it."""

from __future__ import annotations

import copy
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dvfs_schema.loading import load_board, load_model_spec
from estimator.model import Estimator
from estimator.planner import plan_grid
from estimator.profile import ProfileError, parse_profile
from governor.app import fit_on_virtual_board
from governor.client import GovernorClient
from governor.config import GovernorSettings
from governor.core import Governor, GovernorError
from sysfs_backends.virtual.board import VirtualBoard, build_tree
from sysfs_backends.virtual.simulator import Simulator

BOARD = "rpi5"
CLI = [sys.executable, "-m", "governor.cli"]
POLICY = "sys/devices/system/cpu/cpufreq/policy0"


def host_layer(name: str, start: int, end: int) -> dict:
    return {"name": name, "kind": "cpu", "cpu_start_ns": start, "cpu_end_ns": end}


def cpu_only_profile(cpus=(1_500_000, 2_000_000, 2_400_000)) -> dict:
    """t = a * f_ref / f + b per layer, exactly: a 2 ms compute part and a 1 ms memory part."""
    runs = []
    for f in cpus:
        conv = int(2_000_000 * cpus[-1] / f)
        runs.append({"cpu_khz": f, "gpu_hz": None, "context_len": None,
                     "latency_ns": conv + 1_000_000 + 50_000,
                     "layers": [host_layer("conv", 0, conv),
                                host_layer("softmax", conv, conv + 1_000_000)]})
    return {"format": "deadline-dvfs.profile/1", "model": "tiny", "device": "rpi5",
            "frequencies": {"cpu_khz": list(cpus), "gpu_hz": []}, "runs": runs}


def refused(data: dict, *needles: str) -> str:
    with pytest.raises(ProfileError) as info:
        parse_profile(data)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    return str(info.value)


# ---- profile format ------------------------------------------------------------------------
def test_cpu_only_profile_is_valid_and_has_one_domain():
    p = parse_profile(cpu_only_profile())
    assert p.domains == ["cpu"] and p.frequencies.gpu_hz == []
    assert all(r.gpu_hz is None for r in p.runs)


def test_mix_of_no_gpu_table_and_a_run_with_a_gpu_value_is_refused():
    data = cpu_only_profile()
    data["runs"][1]["gpu_hz"] = 600_000_000
    refused(data, "run 1", "rule 'gpu_hz null when frequencies.gpu_hz is []'", "600000000")


def test_gpu_table_with_a_run_without_gpu_value_is_refused(valid_profile):
    data = copy.deepcopy(valid_profile)
    data["runs"][1]["gpu_hz"] = None
    refused(data, "run 1", "rule 'gpu_hz in frequencies.gpu_hz'")


def test_gpu_layer_in_a_profile_without_gpu_is_refused():
    data = cpu_only_profile()
    for run in data["runs"]:
        run["layers"][1].update(kind="gpu", gpu_start_ns=run["layers"][1]["cpu_start_ns"],
                                gpu_end_ns=run["layers"][1]["cpu_end_ns"])
    refused(data, "run 0, layer 1", "no gpu layers when frequencies.gpu_hz is []")


# ---- estimator -----------------------------------------------------------------------------
def test_fit_recovers_exact_cpu_scaling_and_round_trips():
    est = Estimator.fit(parse_profile(cpu_only_profile()))
    assert est.domains == ["cpu"] and est.data.gpu_ref_hz is None
    # 2 ms at 2.4 GHz scales with 1/f, the 1 ms memory part and the 50 us tail do not
    for f in (1_500_000, 1_800_000, 2_400_000):
        assert est.latency_ms(f) == pytest.approx(2.0 * 2_400_000 / f + 1.05, rel=1e-3)
    again = Estimator.from_json(est.to_json())
    assert again.data.gpu_hz == [] and again.latency_ms(1_700_000) == pytest.approx(est.latency_ms(1_700_000))
    with pytest.raises(ValueError, match="without a GPU"):
        est.latency_ms(1_500_000, 500_000_000)


@pytest.fixture(scope="module")
def rpi5_estimators():
    board = load_board(BOARD)
    return {"mnv2": fit_on_virtual_board(board, "mobilenet_v2"),
            "llm": fit_on_virtual_board(board, "smollm_135m")}


def test_simulated_cpu_only_board_is_predicted_over_the_whole_table(rpi5_estimators):
    board = load_board(BOARD)
    sim = Simulator(board, load_model_spec("mobilenet_v2"))
    est = rpi5_estimators["mnv2"]
    grid = est.grid()
    assert grid.gpu_hz is None
    assert grid.cpu_khz.tolist() == board.cpu.inference.frequencies_khz
    truth = sim.run(grid.cpu_khz, None).latency_ns / 1e6
    mape = float(np.mean(np.abs(grid.latency_ms - truth) / truth))
    assert mape < 0.02, mape
    assert set(grid.rows()[0]) == {"cpu_khz", "latency_ms", "host_busy_ms"}


def test_plan_over_one_domain_covers_both_ends_and_the_middle():
    table = load_board(BOARD).cpu.inference.frequencies_khz
    plan = plan_grid([table])
    assert plan[:3] == [(2_400_000,), (1_500_000,), (2_000_000,)] and len(set(plan)) == 5
    assert plan_grid([[1, 2]], 5) == [(2,), (1,)]


def sh(*args, check=True):
    res = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_cli_simulate_fit_estimate_grid_and_plan_without_gpu(tmp_path):
    sh("simulate", "--board", BOARD, "--model", "mobilenet_v2", "-o", tmp_path / "p.json")
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["frequencies"]["gpu_hz"] == [] and {r["gpu_hz"] for r in prof["runs"]} == {None}
    out = sh("fit", tmp_path / "p.json", "-o", tmp_path / "e.json").stdout
    assert "15 runs at 5 frequency points (cpu)" in out
    row = json.loads(sh("estimate", tmp_path / "e.json", "--cpu-khz", 1_800_000, "--json").stdout)
    assert set(row) == {"cpu_khz", "latency_ms", "host_busy_ms"} and row["cpu_khz"] == 1_800_000
    rows = json.loads(sh("estimate", tmp_path / "e.json", "--grid", "--json").stdout)
    assert [r["cpu_khz"] for r in rows] == load_board(BOARD).cpu.inference.frequencies_khz
    assert all("gpu_hz" not in r for r in rows)
    assert rows[0]["latency_ms"] > rows[-1]["latency_ms"]
    bad = sh("estimate", tmp_path / "e.json", "--cpu-khz", 1_800_000, "--gpu-hz", 5, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "without a GPU" in bad.stderr and "drop --gpu-hz" in bad.stderr
    plan = json.loads(sh("plan", "--board", BOARD, "--json").stdout)
    assert plan[:2] == [{"cpu_khz": 2_400_000}, {"cpu_khz": 1_500_000}]


# ---- governor in process -------------------------------------------------------------------
@pytest.fixture
def setup(tmp_path, rpi5_estimators):
    board = load_board(BOARD)
    vb = VirtualBoard(tmp_path / "b", board)
    gov = Governor(vb.backend(tmp_path / "s.json"), board, rpi5_estimators,
                   GovernorSettings(state_refresh_s=0.001))
    gov.start()
    yield gov, vb
    gov.stop()


def test_governor_decides_cpu_only_and_writes_the_cpu(setup, caplog):
    gov, vb = setup
    caplog.set_level(logging.INFO, logger="governor.core")
    for deadline in (30.0, 17.0, 22.0, 200.0):
        d = gov.before_frame("mnv2", deadline, app="cam")
        assert d.gpu_hz is None and d.feasible
        assert (vb.root / POLICY / "scaling_cur_freq").read_text().strip() == str(d.cpu_khz)
        time.sleep(0.002)  # let the state refresh run before the next decision
        gov.after_frame(d.frame, d.predicted_ms)
    lm = gov.before_frame("llm", 60.0, context_len=700)
    assert lm.gpu_hz is None
    gov.after_frame(lm.frame, 30.0)
    st = gov.status()
    assert st["gpu_hz"] is None and st["capped"] is False
    assert not [r for r in caplog.records if "dropped" in r.getMessage() or "capped" in r.getMessage()]


def test_energy_model_has_no_gpu_term(setup, rpi5_estimators):
    gov, _ = setup
    board = gov.board
    br = rpi5_estimators["mnv2"].grid(with_overlap=False)
    energy_mj = gov._grid("mnv2", None).energy_mj[gov.correction("default", "mnv2").level]
    expected = (board.power_mw("cpu", br.cpu_khz) * br.host_busy_ms
                + board.idle_power_mw * br.latency_ms) * 1e-3
    assert energy_mj == pytest.approx(expected, rel=1e-9)


def test_thermal_cap_is_the_cpu_alone(setup):
    gov, vb = setup
    vb.kernel.force_thermal_cap(True)
    gov._next_refresh = 0
    d = gov.before_frame("mnv2", 14.0)
    assert d.cpu_khz == vb.board.simulation.thermal_cap_cpu_khz and d.gpu_hz is None
    assert gov.status()["capped"] is True


def test_estimators_and_board_must_share_domains(tmp_path, rpi5_estimators):
    gpu_board = load_board("rk3588")
    vb = VirtualBoard(tmp_path / "b", gpu_board)
    with pytest.raises(GovernorError, match=r"domains \['cpu'\] but board 'rk3588' has \['cpu', 'gpu'\]"):
        Governor(vb.backend(tmp_path / "s.json"), gpu_board, rpi5_estimators)


# ---- daemon, status, restore ---------------------------------------------------------------
def start_daemon(tmp: Path) -> subprocess.Popen:
    cfg = {"board": BOARD, "socket": str(tmp / "gov.sock"), "log_level": "info",
           "backend": {"kind": "virtual", "virtual_root": str(tmp / "vb"),
                       "state_file": str(tmp / "saved.json")},
           "models": {"mnv2": {"simulate": "mobilenet_v2"}},
           "governor": {"state_refresh_s": 0.01}}
    (tmp / "gov.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([*CLI, "run", "--config", str(tmp / "gov.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        if (tmp / "gov.sock").exists():
            try:
                GovernorClient(str(tmp / "gov.sock")).close()
                return proc
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("daemon did not start")


def test_daemon_serves_a_cpu_only_board_without_gpu_values_or_false_caps(tmp_path):
    proc = start_daemon(tmp_path)
    try:
        with GovernorClient(str(tmp_path / "gov.sock"), app="cam") as c:
            for deadline in (40.0, 17.0, 25.0):
                d = c.before_frame("mnv2", deadline)
                assert d["ok"] and d["gpu_hz"] is None and d["feasible"]
                assert (tmp_path / "vb" / POLICY / "scaling_setspeed").read_text().strip() == str(d["cpu_khz"])
                time.sleep(0.03)  # several state refreshes between frames
                c.after_frame(d["frame"], d["predicted_ms"])
            st = c.status()
        assert st["gpu_hz"] is None and st["capped"] is False
        assert {k: st["apps"]["cam"][k] for k in ("frames", "misses", "infeasible")} == {
            "frames": 3, "misses": 0, "infeasible": 0}
        text = sh("status", "--socket", tmp_path / "gov.sock").stdout
        assert "no gpu" in text and "capped" not in text and "None" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "dropped" not in err and "capped" not in err
    assert (tmp_path / "vb" / POLICY / "scaling_governor").read_text().strip() == "ondemand"


def test_status_linux_backend_on_a_cpu_only_tree(tmp_path):
    build_tree(tmp_path / "root", load_board(BOARD))
    assert not (tmp_path / "root/sys/class/devfreq").exists()
    out = sh("status", "--board", BOARD, "--backend", "linux", "--sysfs-root", tmp_path / "root").stdout
    assert "cpu: cpufreq policy0 cpus 0,1,2,3" in out and "gpu" not in out
    assert "table (10): 1500000 1600000" in out
    found = json.loads(sh("status", "--board", BOARD, "--backend", "linux", "--sysfs-root",
                          tmp_path / "root", "--json").stdout)
    assert list(found["domains"]) == ["cpu"] and list(found["states"]) == ["cpu"]


def test_sigkill_then_restore_cli_on_the_cpu_only_board(tmp_path):
    proc = start_daemon(tmp_path)
    # killed while its client is still connected: a client that has gone lets the daemon hand the
    # board back at once (idle release), which would race the checks below
    with GovernorClient(str(tmp_path / "gov.sock")) as c:
        d = c.before_frame("mnv2", 40.0)
        assert d["cpu_khz"] < 2_400_000
        assert (tmp_path / "vb" / POLICY / "scaling_governor").read_text().strip() == "userspace"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    out = sh("restore", "--board", BOARD, "--backend", "virtual", "--virtual-root", tmp_path / "vb",
             "--state-file", tmp_path / "saved.json").stdout
    assert "restored cpu" in out and "gpu" not in out
    pol = tmp_path / "vb" / POLICY
    assert pol.joinpath("scaling_governor").read_text().strip() == "ondemand"
    assert (pol / "scaling_min_freq").read_text().strip() == "1500000"
    assert (pol / "scaling_max_freq").read_text().strip() == "2400000"
    assert "nothing to restore" in sh("restore", "--board", BOARD, "--backend", "virtual", "--virtual-root",
                                      tmp_path / "vb", "--state-file", tmp_path / "saved.json").stdout
