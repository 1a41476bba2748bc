"""Two arms of benchmarks/governor_dynamics.py runs, row by row, against their run-to-run spread.

One run decides nothing: the same code gives a row 1.07x in one run and 1.13x in the next (the
SD888's SmolLM-135M at a tight deadline, after the load phase), and a whole run's count of rows
within 1.05x moves by two or three. Run each arm several times, alternating, each from its own
tree; this puts them side by side: per (case, phase, app) row each arm's mean and range of energy
against the joint oracle at the miss target and its mean late frames, and whether the ranges are
apart (every run of one arm below every run of the other). Per run: the figures issue 11 is
judged by. JSON on stdout:

    python benchmarks/compare_dynamics.py --a new1.json new2.json --b old1.json old2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TARGET = 1.05  # the bound on energy against the joint oracle at the miss target


def rows(result: dict) -> dict[tuple, dict]:
    """Each (case, phase, app) row of one run: its energy ratio, late frames, the judge's."""
    out = {}
    for i, case in enumerate(result["cases"]):
        for phase, p in case["phases"].items():
            for a in p["apps"]:
                if a.get("frames"):
                    key = (i, "+".join(case["apps"]), case["deadline"], phase, a["model"])
                    out[key] = {"energy": a["energy_vs_oracle_joint_target"], "misses": a["misses"],
                                "judge_misses": a["oracle_joint_target_misses"],
                                "misses_ok": a["misses_within_joint_target_plus_1pct"]}
    return out


def per_run(table: dict[tuple, dict]) -> dict:
    """One run's figures: rows within the bound (single-app, shared), medians, late frames."""
    single = [r["energy"] for k, r in table.items() if "+" not in k[1]]
    shared = [r["energy"] for k, r in table.items() if "+" in k[1]]
    every = single + shared

    def median(values):
        return round(float(np.median(values)), 4) if values else None

    return {"rows": len(every), "rows_within_1_05": sum(e <= TARGET for e in every),
            "single_within_1_05": sum(e <= TARGET for e in single), "single_median": median(single),
            "shared_within_1_05": sum(e <= TARGET for e in shared), "shared_median": median(shared),
            "max": round(max(every), 4) if every else None,
            "rows_misses_within_joint_plus_1pct": sum(r["misses_ok"] for r in table.values()),
            "late_frames": sum(r["misses"] for r in table.values())}


def compare(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """Row by row, arm A against arm B. Rows missing from any run are left out (and named)."""
    a_tables, b_tables = [rows(r) for r in a_runs], [rows(r) for r in b_runs]
    keys = [k for k in a_tables[0] if all(k in t for t in a_tables + b_tables)]
    out_rows, apart = [], {"a_lower": 0, "a_higher": 0}
    for k in keys:
        ea = [t[k]["energy"] for t in a_tables]
        eb = [t[k]["energy"] for t in b_tables]
        side = "a_lower" if max(ea) < min(eb) else "a_higher" if min(ea) > max(eb) else None
        if side:
            apart[side] += 1
        out_rows.append({"case": k[0], "apps": k[1], "deadline": k[2], "phase": k[3], "model": k[4],
                         "a": {"energy_mean": round(float(np.mean(ea)), 4), "energy_range": [min(ea), max(ea)],
                               "misses_mean": round(float(np.mean([t[k]["misses"] for t in a_tables])), 2)},
                         "b": {"energy_mean": round(float(np.mean(eb)), 4), "energy_range": [min(eb), max(eb)],
                               "misses_mean": round(float(np.mean([t[k]["misses"] for t in b_tables])), 2)},
                         "judge_misses": a_tables[0][k]["judge_misses"], "apart": side})
    left_out = sorted({str(k) for t in a_tables + b_tables for k in t} - {str(k) for k in keys})
    return {"benchmark": "compare_dynamics", "runs": {"a": len(a_runs), "b": len(b_runs)},
            "a_runs": [per_run(t) for t in a_tables], "b_runs": [per_run(t) for t in b_tables],
            "rows_apart": apart, "rows": out_rows, "rows_left_out": left_out}


def _load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"{path}: not a governor_dynamics result ({exc})")
    if data.get("benchmark") != "governor_dynamics" or "cases" not in data:
        sys.exit(f"{path}: not a governor_dynamics result (its 'benchmark' is {data.get('benchmark')!r})")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", nargs="+", required=True, metavar="RUN.json", help="arm A's runs")
    ap.add_argument("--b", nargs="+", required=True, metavar="RUN.json", help="arm B's runs")
    args = ap.parse_args()
    print(json.dumps(compare([_load(p) for p in args.a], [_load(p) for p in args.b]), indent=1))


if __name__ == "__main__":
    main()
