"""Estimator accuracy on every virtual board x model, against the simulator's noise-free truth.

For each case: profile the planned points (3 noisy repeats each, as a device would measure them),
fit, and compare with the truth over the whole frequency grid, i.e. mostly at pairs the estimator
never saw. Two baselines in the same run:

* ``naive``: the latency measured at the fastest pair scaled by f_max/f of the bound side (GPU if
  the device was busier than the host there, else CPU);
* ``no_overlap``: the same per-segment fits summed serially (host + device + tail), i.e. a model
  without the asynchronous overlap and bubble accounting.

Language models: profiled at the model's ``profile_context_len``; the truth is compared at those
and, separately, at context lengths never profiled (within 4x of the profiled ones).

Also: how the error falls with more planned points (5, 7, 9, 12), the guidance behind the planner.

Prints JSON. ``python benchmarks/estimator_accuracy.py [--quick] [--board NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from dvfs_schema.loading import available, load_board, load_model_spec
from estimator.baselines import naive_scaling
from estimator.model import Estimator
from estimator.planner import plan_grid
from estimator.profile import parse_profile
from sysfs_backends.virtual.simulator import Simulator

MODELS = ["mobilenet_v2", "yolo_tiny", "smollm_135m"]
UNSEEN_CONTEXT_FACTORS = [0.5, 2.0, 4.0]


def errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    ape = np.abs(pred - truth) / truth * 100
    return {"mape_pct": round(float(ape.mean()), 3), "p95_ape_pct": round(float(np.percentile(ape, 95)), 3),
            "max_ape_pct": round(float(ape.max()), 3)}


def no_overlap(est: Estimator, cpu: np.ndarray, gpu: np.ndarray | None, ctx: float | None) -> np.ndarray:
    host, disp, exe, tail = est._segments_at(cpu, gpu, ctx)
    return (host.sum(axis=0) + exe.sum(axis=0) + tail) / 1e6


def one_case(board_name: str, model_name: str, n_points: int, seed: int) -> dict:
    board, spec = load_board(board_name), load_model_spec(model_name)
    sim = Simulator(board, spec)
    tables = list(board.domain_tables.values())  # CPU (and GPU when the board has one)
    pairs = plan_grid(tables, n_points)
    contexts = spec.profile_context_len or None
    profile = parse_profile(sim.profile(pairs, 3, contexts, np.random.default_rng(seed)))
    t0 = time.perf_counter()
    est = Estimator.fit(profile)
    fit_s = time.perf_counter() - t0
    c, g = est.grid_pairs
    seen_ctx = contexts or [None]
    result: dict = {"board": board_name, "model": model_name, "points": n_points, "has_gpu": board.gpu is not None,
                    "grid": "x".join(str(len(t)) for t in tables), "runs": len(profile.runs),
                    "fit_s": round(fit_s, 3)}
    preds = {"estimator": [], "naive": [], "no_overlap": []}
    truths = []
    for ctx in seen_ctx:
        truths.append(sim.run(c, g, ctx).latency_ns / 1e6)
        preds["estimator"].append(est.latency_ms(c, g, ctx))
        preds["naive"].append(naive_scaling(profile, c, g, ctx))
        preds["no_overlap"].append(no_overlap(est, c, g, ctx))
    truth = np.concatenate(truths)
    for name, p in preds.items():
        result[name] = errors(np.concatenate(p), truth)
    result["truth_ms_range"] = [round(float(truth.min()), 3), round(float(truth.max()), 3)]
    if contexts:
        unseen = sorted({int(f * x) for x in contexts for f in UNSEEN_CONTEXT_FACTORS} - set(contexts))
        unseen = [u for u in unseen if u <= 4 * max(contexts) and u >= min(contexts) / 4]
        t = np.concatenate([sim.run(c, g, u).latency_ns / 1e6 for u in unseen])
        p = np.concatenate([est.latency_ms(c, g, u) for u in unseen])
        result["unseen_context"] = {"context_len": unseen, **errors(p, t)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the points sweep")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--board", action="append", help="only these virtual boards (default: every one)")
    args = ap.parse_args()
    boards = args.board or [b for b, p in available("boards").items() if load_board(p).simulation is not None]
    cases = [one_case(b, m, 5, args.seed) for b in boards for m in MODELS]
    targets = {
        "mape_le_3pct": all(c["estimator"]["mape_pct"] <= 3 for c in cases),
        "p95_le_6pct": all(c["estimator"]["p95_ape_pct"] <= 6 for c in cases),
        # against the pipeline it ignores; on a CPU-only board f_max/f is a fair model of a
        # compute-bound network, so the ratio is reported there, not required
        "4x_better_than_naive": all(
            c["naive"]["mape_pct"] >= 4 * c["estimator"]["mape_pct"] for c in cases if c["has_gpu"]),
        "unseen_context_mape_le_5pct": all(
            c["unseen_context"]["mape_pct"] <= 5 for c in cases if "unseen_context" in c),
    }
    summary = {
        "estimator_mape_pct_median": float(np.median([c["estimator"]["mape_pct"] for c in cases])),
        "estimator_mape_pct_worst": max(c["estimator"]["mape_pct"] for c in cases),
        "estimator_p95_pct_worst": max(c["estimator"]["p95_ape_pct"] for c in cases),
        "naive_mape_pct_median": float(np.median([c["naive"]["mape_pct"] for c in cases])),
        "no_overlap_mape_pct_median": float(np.median([c["no_overlap"]["mape_pct"] for c in cases])),
        "naive_over_estimator_mape_ratio_min": round(min(
            c["naive"]["mape_pct"] / max(c["estimator"]["mape_pct"], 1e-9) for c in cases), 2),
    }
    out = {"benchmark": "estimator_accuracy", "seed": args.seed, "summary": summary,
           "targets_met": targets, "cases": cases}
    if not args.quick:
        sweep = {}
        for n in (5, 7, 9, 12):
            mapes = [one_case(b, m, n, args.seed)["estimator"]["mape_pct"] for b in boards for m in MODELS]
            sweep[str(n)] = {"mape_pct_mean": round(float(np.mean(mapes)), 3),
                             "mape_pct_worst": round(float(np.max(mapes)), 3)}
        out["error_vs_points"] = sweep
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
