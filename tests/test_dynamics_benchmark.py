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
COMPARE = BENCH.with_name("compare_dynamics.py")


@pytest.mark.skipif(fuse_unavailable() is not None, reason=fuse_unavailable() or "")
def test_quick_smallest_case_runs_and_reports_every_phase(tmp_path):
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
    _compare_tells_apart_only_what_is_apart(res, tmp_path)


def _compare_tells_apart_only_what_is_apart(res: dict, tmp_path: Path) -> None:
    """benchmarks/compare_dynamics.py on this run: against itself no row is apart; with one row of
    arm A's runs made 10% cheaper, that row and only that one is (A lower), and the per-run counts
    follow the rows."""
    same = tmp_path / "run.json"
    same.write_text(json.dumps(res))
    cheaper = json.loads(json.dumps(res))
    row = cheaper["cases"][0]["phases"]["load"]["apps"][0]
    row["energy_vs_oracle_joint_target"] = round(row["energy_vs_oracle_joint_target"] * 0.9, 4)
    changed = tmp_path / "cheaper.json"
    changed.write_text(json.dumps(cheaper))

    def compare(a: list[Path], b: list[Path]) -> dict:
        out = subprocess.run([sys.executable, str(COMPARE), "--a", *map(str, a), "--b", *map(str, b)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    itself = compare([same, same], [same])
    assert itself["rows_apart"] == {"a_lower": 0, "a_higher": 0} and len(itself["rows"]) == 6
    assert itself["rows_left_out"] == []
    d = compare([changed], [same, same])
    assert d["rows_apart"] == {"a_lower": 1, "a_higher": 0}
    (apart,) = [r for r in d["rows"] if r["apart"]]
    assert apart["phase"] == "load" and apart["a"]["energy_mean"] == row["energy_vs_oracle_joint_target"]
    within = sum(a["energy_vs_oracle_joint_target"] <= 1.05 for p in res["cases"][0]["phases"].values()
                 for a in p["apps"])
    assert d["b_runs"][0]["rows_within_1_05"] == within
    bad = subprocess.run([sys.executable, str(COMPARE), "--a", str(tmp_path / "none.json"), "--b", str(same)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "none.json" in bad.stderr and "Traceback" not in bad.stderr
