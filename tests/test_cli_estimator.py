"""`dvfs-gov simulate | fit | estimate` end to end, as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dvfs_schema.loading import load_board

DVFS = [sys.executable, "-m", "governor.cli"]


def sh(*args, check=True):
    res = subprocess.run([*DVFS, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    sh("simulate", "--board", "rk3588", "--model", "yolo_tiny", "-o", d / "p.json")
    out = sh("fit", d / "p.json", "-o", d / "e.json").stdout
    assert "23 layers, 24 runs at 8 frequency points (cpu x gpu x mem)" in out  # rk3588: dmc too
    return d


def test_estimate_one_pair_json(fitted):
    # rk3588 has a memory domain, which simulate plans over: the memory level is asked for too
    row = json.loads(sh("estimate", fitted / "e.json", "--cpu-khz", 1200000, "--gpu-hz",
                        500000000, "--mem-hz", 2112000000, "--json").stdout)
    assert row["cpu_khz"] == 1200000 and row["gpu_hz"] == 500000000 and row["mem_hz"] == 2112000000
    assert 10 < row["latency_ms"] < 100
    assert row["gpu_busy_ms"] <= row["latency_ms"]
    assert row["bubble_ms"] == pytest.approx(row["latency_ms"] - row["gpu_busy_ms"], abs=1e-3)


def test_estimate_grid_covers_every_pair(fitted):
    rows = json.loads(sh("estimate", fitted / "e.json", "--grid", "--json").stdout)
    board = load_board("rk3588")
    pairs = {(r["cpu_khz"], r["gpu_hz"]) for r in rows}
    assert pairs == {(c, g) for c in board.cpu.inference.frequencies_khz
                     for g in board.gpu.frequencies_hz}
    fastest = min(rows, key=lambda r: r["latency_ms"])
    assert fastest["gpu_hz"] == board.gpu.frequencies_hz[-1]


def test_language_model_grid_with_context(tmp_path):
    sh("simulate", "--board", "sd888_phone", "--model", "smollm_135m", "--repeats", 1,
       "-o", tmp_path / "p.json")
    sh("fit", tmp_path / "p.json", "-o", tmp_path / "e.json")
    short = json.loads(sh("estimate", tmp_path / "e.json", "--grid", "--context-len", 256,
                          "--json").stdout)
    long = json.loads(sh("estimate", tmp_path / "e.json", "--grid", "--context-len", 4096,
                         "--json").stdout)
    assert all(a["latency_ms"] < b["latency_ms"] for a, b in zip(short, long, strict=True))
    assert short[0]["context_len"] == 256
    res = sh("estimate", tmp_path / "e.json", "--grid", check=False)
    assert res.returncode == 2 and "--context-len" in res.stderr


def test_bad_profile_is_refused_with_run_layer_rule(tmp_path, valid_profile):
    valid_profile["runs"][1]["layers"][2]["cpu_start_ns"] = 100
    (tmp_path / "bad.json").write_text(json.dumps(valid_profile))
    res = sh("fit", tmp_path / "bad.json", "-o", tmp_path / "e.json", check=False)
    assert res.returncode == 2
    assert "run 1, layer 2" in res.stderr and "rule" in res.stderr
    assert not (tmp_path / "e.json").exists()


def test_not_an_estimator_file(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "something"}')
    res = sh("estimate", tmp_path / "x.json", "--grid", check=False)
    assert res.returncode == 2 and "not a deadline-dvfs estimator file" in res.stderr


def test_cli_daemon_and_backend_imports_leave_scipy_out():
    """Only fitting needs scipy; the CLI, daemon, client and backends start without importing it
    (it was most of their start-up time: ~40 s per start in the arm64 real-kernel guest)."""
    code = ("import sys, governor.cli, governor.daemon, governor.client, sysfs_backends.linux, estimator.model; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy')[:5])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"scipy modules imported at start-up: {out}"


# ---- three domains: `plan` over cpu, gpu, mem; `estimate --mem-hz` ---------------------------------
@pytest.fixture(scope="module")
def fitted3(tmp_path_factory):
    """yolo_tiny profiled on the virtual rk3588 at the points `plan` gives over its three domains."""
    d = tmp_path_factory.mktemp("cli3")
    points = json.loads(sh("plan", "--board", "rk3588", "--json").stdout)
    sh("simulate", "--board", "rk3588", "--model", "yolo_tiny", "-n", len(points), "--repeats", 2,
       "-o", d / "p.json")
    sh("fit", d / "p.json", "-o", d / "e.json")
    return d, points


def test_plan_covers_the_memory_domain(fitted3):
    _, points = fitted3
    board = load_board("rk3588")
    mem = board.memory.frequencies_hz
    assert len(points) == 8 and all(set(p) == {"cpu_khz", "gpu_hz", "mem_hz"} for p in points)
    assert {p["mem_hz"] for p in points} >= {mem[0], mem[-1]} and all(p["mem_hz"] in mem for p in points)
    # every pair of domains at its four corners (the 3-domain planner's promise)
    ends = {"cpu_khz": board.cpu.inference.frequencies_khz, "gpu_hz": board.gpu.frequencies_hz, "mem_hz": mem}
    for a, b in (("cpu_khz", "gpu_hz"), ("cpu_khz", "mem_hz"), ("gpu_hz", "mem_hz")):
        corners = {(x, y) for x in (ends[a][0], ends[a][-1]) for y in (ends[b][0], ends[b][-1])}
        assert corners <= {(p[a], p[b]) for p in points}, (a, b)
    text = sh("plan", "--board", "sd888_phone", "-n", 3).stdout.splitlines()
    assert len(text) == 3 and all(line.endswith("MB/s") and ", mem " in line for line in text)
    # a board without a memory domain: pairs, no mem_hz
    assert all(set(p) == {"cpu_khz", "gpu_hz"} for p in json.loads(sh("plan", "--board", "pixel6_phone",
                                                                       "--json").stdout))


def test_estimate_grid_rows_carry_mem_hz(fitted3):
    d, _ = fitted3
    board = load_board("rk3588")
    rows = json.loads(sh("estimate", d / "e.json", "--grid", "--json").stdout)
    mem = board.memory.frequencies_hz
    assert {(r["cpu_khz"], r["gpu_hz"], r["mem_hz"]) for r in rows} == {
        (c, g, m) for c in board.cpu.inference.frequencies_khz for g in board.gpu.frequencies_hz for m in mem}
    at = {(r["cpu_khz"], r["gpu_hz"], r["mem_hz"]): r["latency_ms"] for r in rows}
    c, g = board.cpu.inference.frequencies_khz[-1], board.gpu.frequencies_hz[-1]
    assert at[(c, g, mem[0])] > at[(c, g, mem[-1])]  # slower memory, slower frame


def test_estimate_mem_hz_required_and_used(fitted3):
    d, _ = fitted3
    mem = load_board("rk3588").memory.frequencies_hz
    base = ["estimate", d / "e.json", "--cpu-khz", 1800000, "--gpu-hz", 800000000]
    res = sh(*base, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"error: yolo_tiny was profiled with a memory domain: give --mem-hz, one of "
                                  f"{', '.join(map(str, mem))} (or values between them), or --grid")
    slow = json.loads(sh(*base, "--mem-hz", mem[0], "--json").stdout)
    fast = json.loads(sh(*base, "--mem-hz", mem[-1], "--json").stdout)
    assert slow["mem_hz"] == mem[0] and fast["mem_hz"] == mem[-1]
    assert slow["latency_ms"] > fast["latency_ms"]
    assert f", mem {mem[0]}: " in sh(*base, "--mem-hz", mem[0]).stdout
    res = sh(*base, "--mem-hz", mem[-1] * 2, check=False)
    assert res.returncode == 0 and "--mem-hz" in res.stderr and "extrapolated" in res.stderr
    res = sh("estimate", d / "e.json", "--grid", "--mem-hz", mem[0], check=False)
    assert res.returncode == 2 and "drop --cpu-khz/--gpu-hz/--mem-hz" in res.stderr


def test_mem_hz_refused_without_a_memory_domain(tmp_path):
    sh("simulate", "--board", "pixel6_phone", "--model", "yolo_tiny", "--repeats", 1, "-o", tmp_path / "p.json")
    sh("fit", tmp_path / "p.json", "-o", tmp_path / "e.json")
    gpu = load_board("pixel6_phone").gpu.frequencies_hz[-1]
    assert "mem_hz" not in json.loads(sh("estimate", tmp_path / "e.json", "--grid", "--json").stdout)[0]
    res = sh("estimate", tmp_path / "e.json", "--cpu-khz", 1200000, "--gpu-hz", gpu, "--mem-hz",
             2112000000, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "profiled without a memory domain (domains: cpu, gpu): drop --mem-hz" in res.stderr
