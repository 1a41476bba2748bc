"""Keeps benchmarks/governor_dynamics.py from rotting: its smallest --quick case, a few frames per
phase, end to end (FUSE mount, daemon subprocess, Linux backend, app client, both oracles)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sysfs_backends.virtual.fuse_mount import fuse_unavailable

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "governor_dynamics.py"


@pytest.mark.skipif(fuse_unavailable() is not None, reason=fuse_unavailable() or "")
def test_quick_smallest_case_runs_and_reports_every_phase():
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--cases", "1", "--frames-per-phase", "3",
                          "--no-save"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    (case,) = res["cases"]
    assert case["errors"] == []
    assert list(case["phases"]) == res["phases"] == ["steady", "load", "recovery", "cap", "after_cap", "burst"]
    for name, phase in case["phases"].items():
        (app,) = phase["apps"]
        assert app["frames"] == 3
        # the kernel really was capped in the cap phase only: the phases drive the board, not labels
        assert app["capped_frames"] == (3 if name == "cap" else 0)
        assert app["energy_vs_oracle"] > 0 and app["energy_vs_oracle_target"] > 0
        # one app alone: its frames never overlap, so the joint reference is the per-frame one
        assert app["energy_vs_oracle_joint_target"] == pytest.approx(app["energy_vs_oracle_target"], rel=0.02)
        assert app["waited_ms_mean"] == 0
        assert app["decision_rt_us_p50"] > 0
        if name != "cap":
            assert phase["writes_above_cap"] == 0
    assert sum(p["writes"] for p in case["phases"].values()) <= case["writes"]
    assert res["summary"]["cases"] == 1 and res["summary"]["errors"] == 0
