"""`dvfs-gov import-trace` on a real PyTorch-profiler trace recorded on an H100 (tests/fixtures)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from estimator.model import Estimator
from governor.profiler.trace_import import TracedRun, TraceError, merge, runs_from_trace

FIXTURE = Path(__file__).parent / "fixtures" / "torch_trace.json"


@pytest.fixture(scope="module")
def trace() -> dict:
    return json.loads(FIXTURE.read_text())


def test_one_trace_becomes_valid_runs(trace):
    runs = runs_from_trace(trace, "t.json")
    assert len(runs) == 3  # the three record_function("inference#i") blocks
    prof = merge([(TracedRun("t.json", 2_000_000, 1_020_000_000, None), runs)], "m", "h100")
    layers = prof.runs[0].layers
    kinds = [x.kind for x in layers]
    assert kinds.count("gpu") == 11 and layers[-1].name == "aten::topk" and layers[-1].kind == "cpu"
    assert any(x.name.startswith("aten::cudnn_convolution:") for x in layers)
    for run in prof.runs:
        assert run.latency_ns >= max(x.cpu_end_ns for x in run.layers)


def test_traces_at_several_pairs_merge_into_one_profile(trace):
    runs = runs_from_trace(trace, "t.json")
    prof = merge([(TracedRun("a.json", 2_000_000, 1_020_000_000, None), runs),
                  (TracedRun("b.json", 1_000_000, 600_000_000, None), runs)], "m", "h100",
                 cpu_table=[1_000_000, 1_500_000, 2_000_000])
    p = prof
    assert p.frequencies.cpu_khz == [1_000_000, 1_500_000, 2_000_000]
    assert {(r.cpu_khz, r.gpu_hz) for r in p.runs} == {(2_000_000, 1_020_000_000), (1_000_000, 600_000_000)}
    assert len(Estimator.fit(p).data.layer_names) == 14


def test_different_kernels_between_runs_are_refused(trace):
    t = copy.deepcopy(trace)
    steps = sorted((e for e in t["traceEvents"] if e.get("cat") == "user_annotation"), key=lambda e: e["ts"])
    last = steps[-1]
    victim = next(e for e in t["traceEvents"] if e.get("cat") == "kernel" and e["ts"] > last["ts"])
    t["traceEvents"].remove(victim)
    runs = runs_from_trace(t, "t.json")
    with pytest.raises(TraceError, match=r"step 'inference#2': layer \d+ differs"):
        merge([(TracedRun("t.json", 1, 1, None), runs)], "m", "d")


def test_overlapping_streams_are_refused(trace):
    t = copy.deepcopy(trace)
    kernels = sorted((e for e in t["traceEvents"] if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    kernels[1]["ts"] = kernels[0]["ts"] + 0.5 * kernels[0]["dur"] - 5  # starts inside the first one
    with pytest.raises(TraceError, match="in-order queue"):
        runs_from_trace(t, "t.json")


def test_cli_end_to_end(tmp_path):
    cli = [sys.executable, "-m", "governor.cli", "import-trace"]
    out = subprocess.run([*cli, f"{FIXTURE}@2000000,1020000000", f"{FIXTURE}@1000000,600000000",
                          "--model", "tiny", "--device", "h100", "-o", tmp_path / "p.json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "6 runs of 14 layers from 2 trace(s)" in out.stdout
    fit = subprocess.run([sys.executable, "-m", "governor.cli", "fit", tmp_path / "p.json", "-o", tmp_path / "e.json"],
                         capture_output=True, text=True, timeout=60)
    assert fit.returncode == 0, fit.stderr
    bad = subprocess.run([*cli, str(FIXTURE), "--model", "t", "--device", "d", "-o", tmp_path / "x.json"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "FILE@CPU_KHZ,GPU_HZ" in bad.stderr
