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
    assert "23 layers, 15 runs at 5 frequency pairs" in out
    return d


def test_estimate_one_pair_json(fitted):
    row = json.loads(sh("estimate", fitted / "e.json", "--cpu-khz", 1200000, "--gpu-hz",
                        500000000, "--json").stdout)
    assert row["cpu_khz"] == 1200000 and row["gpu_hz"] == 500000000
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
