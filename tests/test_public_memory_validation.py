"""The public Jetson TX2 GPU x EMC data (benchmarks/data/jetson_tx2_emc) load as the full grid, and
benchmarks/public_memory_validation.py fits and scores on a small subset of it: the error is taken
over grid points no fit was given, and is finite. Also: a malformed data file is refused with one
line naming the file, the line and the field."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "public_memory_validation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("public_memory_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_load_as_the_full_grid(bench):
    data = bench.load_dataset()
    assert sorted(data) == ["inception_v4", "resnet", "tiny-yolov3", "vgg19"]
    for points in data.values():
        assert len(points) == 13 * 4
        assert {m for _, m in points} == {1062400000, 1331200000, 1600000000, 1866000000}
        assert min(g for g, _ in points) == 114750000 and max(g for g, _ in points) == 1300500000
    # a value checked against the source file vgg19_1300500000_1062400000_output.txt
    assert data["vgg19"][(1300500000, 1062400000)] == pytest.approx(99.42943529411764)


def test_scored_only_on_points_never_profiled(bench):
    full = bench.load_dataset()["vgg19"]
    gpus = sorted({g for g, _ in full})[::2]  # 7 GPU levels x 4 EMC: a small grid
    subset = {p: ms for p, ms in full.items() if p[0] in gpus}
    r = bench.validate_model("vgg19", subset, 6)
    plan = {(p["gpu_hz"], p["mem_hz"]) for p in r["plan"]}
    held = {(p["gpu_hz"], p["mem_hz"]) for p in r["heldout"]}
    assert len(plan) == r["profiled_points"] == 6
    assert held and not held & plan and held <= set(subset)
    # the baseline's points (top EMC level) are not scored either
    assert len(held) < len(subset) - len(plan)
    assert r["heldout_points"] == len(held)
    for fit in ("end_to_end_with_memory", "cpu_x_gpu_at_top_memory_baseline"):
        assert all(math.isfinite(v) and v >= 0 for v in r[fit].values()), r[fit]
    # VGG-19 is 1.48x slower at the lowest EMC level: a fit that ignores memory must be worse
    assert r["end_to_end_with_memory"]["mape_pct"] < r["cpu_x_gpu_at_top_memory_baseline"]["mape_pct"]


def test_malformed_data_is_refused_naming_line_and_field(tmp_path):
    bad = tmp_path / "latency.csv"
    bad.write_text("model,gpu_hz,emc_hz,gpu_latency_ms\nvgg19,1300500000,fast,99.4\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(bad), "--points", "5"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(bad) in err and "line 2" in err and "emc_hz" in err


def test_cli_prints_json(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--models", "resnet", "--points", "5",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed == json.loads(out.read_text())
    model = printed["by_points"]["5"]["models"][0]
    assert model["model"] == "resnet" and model["heldout_points"] > 0
