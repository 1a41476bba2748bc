"""Estimator accuracy on every virtual board x model, against the simulator's noise-free truth.

For each case: profile the planned points (3 noisy repeats each, as a device would measure them),
fit, and compare with the truth over the whole frequency grid, i.e. mostly at pairs the estimator
never saw. Two baselines in the same run:

* ``naive``: the latency measured at the fastest pair scaled by f_max/f of the bound side (GPU if
  the device was busier than the host there, else CPU);
* ``no_overlap``: the same per-segment fits summed serially (host + device + tail), i.e. a model
  without the asynchronous overlap and bubble accounting.

Boards with a memory domain (issue 12): the grid is (cpu, gpu, mem) and the plan has 8 points
(estimator.planner). Two more comparisons there:

* ``cpu_gpu_at_top_mem``: the two-domain estimator a board without a memory knob would give:
  profiled at the 5 planned (cpu, gpu) pairs with the memory at its highest level, predicting
  the whole three-domain grid as if the memory clock did not matter;
* ``end_to_end``: the same planned points profiled end to end (``layers: []``, only the latency)
  and fitted as a whole model, at the default plan and at 5 points.

Language models: profiled at the model's ``profile_context_len``; the truth is compared at those
and, separately, at context lengths never profiled (within 4x of the profiled ones).

Also: how the error falls with more planned points (5, 7, 9, 12; 5, 8, 12 over three domains), the
guidance behind the planner.

Prints JSON. ``python benchmarks/estimator_accuracy.py [--quick] [--seeds 1,2,3,4,5] [--board NAME ...]``.
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


def errors(pred: np.ndarray, truth: np.ndarray, keep: np.ndarray | None = None) -> dict[str, float]:
    """MAPE, P95 and worst APE, over the points ``keep`` marks (all without it)."""
    if keep is not None:
        pred, truth = pred[keep], truth[keep]
    ape = np.abs(pred - truth) / truth * 100
    return {"mape_pct": round(float(ape.mean()), 3), "p95_ape_pct": round(float(np.percentile(ape, 95)), 3),
            "max_ape_pct": round(float(ape.max()), 3)}


def no_overlap(est: Estimator, cpu: np.ndarray, gpu: np.ndarray | None, ctx: float | None,
               mem: np.ndarray | None = None) -> np.ndarray:
    host, _, exe, tail, _ = est._segments_at(cpu, gpu, ctx, mem)
    return (host.sum(axis=0) + exe.sum(axis=0) + tail) / 1e6


def unprofiled(est: Estimator, points: list[tuple[int, ...]], contexts: int) -> np.ndarray:
    """A mask over the grid (repeated once per context) of the points not among ``points``."""
    seen = {tuple(int(v) for v in p) for p in points}
    grid = [tuple(int(v) for v in p) for p in est.grid_points]
    return np.tile([p not in seen for p in grid], contexts)


def one_case(board_name: str, model_name: str, n_points: int | None, seed: int,
             end_to_end: bool = True) -> dict:
    """``n_points`` None: the planner's default for the board's domains. On boards with a memory
    domain every error is over the grid points never profiled; on the others over the whole grid
    (mostly unprofiled: 5 of 80-200 points)."""
    board, spec = load_board(board_name), load_model_spec(model_name)
    sim = Simulator(board, spec)
    tables = list(board.domain_tables.values())  # CPU, GPU and memory where the board has them
    points = plan_grid(tables, n_points)
    contexts = spec.profile_context_len or None
    profile = parse_profile(sim.profile(points, 3, contexts, np.random.default_rng(seed)))
    t0 = time.perf_counter()
    est = Estimator.fit(profile)
    fit_s = time.perf_counter() - t0
    c, g = est.grid_pairs
    m = est.grid_mem
    seen_ctx = contexts or [None]
    result: dict = {"board": board_name, "model": model_name, "points": len(points),
                    "has_gpu": board.gpu is not None, "has_mem": m is not None,
                    "grid": "x".join(str(len(t)) for t in tables), "runs": len(profile.runs),
                    "fit_s": round(fit_s, 3)}
    preds = {"estimator": [], "naive": [], "no_overlap": []}
    truths = []
    for ctx in seen_ctx:
        truths.append(sim.run(c, g, ctx, mem_hz=m).latency_ns / 1e6)
        preds["estimator"].append(est.latency_ms(c, g, ctx, mem_hz=m))
        preds["naive"].append(naive_scaling(profile, c, g, ctx))
        preds["no_overlap"].append(no_overlap(est, c, g, ctx, m))
    truth = np.concatenate(truths)
    held_out = unprofiled(est, points, len(seen_ctx)) if m is not None else None
    for name, p in preds.items():
        result[name] = errors(np.concatenate(p), truth, held_out)
    result["truth_ms_range"] = [round(float(truth.min()), 3), round(float(truth.max()), 3)]
    if contexts:
        unseen = sorted({int(f * x) for x in contexts for f in UNSEEN_CONTEXT_FACTORS} - set(contexts))
        unseen = [u for u in unseen if u <= 4 * max(contexts) and u >= min(contexts) / 4]
        t = np.concatenate([sim.run(c, g, u, mem_hz=m).latency_ns / 1e6 for u in unseen])
        p = np.concatenate([est.latency_ms(c, g, u, mem_hz=m) for u in unseen])
        result["unseen_context"] = {"context_len": unseen, **errors(p, t)}
    if m is not None and end_to_end:
        # the two-domain estimator, memory at its highest level, over the three-domain grid
        pairs = plan_grid(tables[:-1])
        two = Estimator.fit(parse_profile(sim.profile(pairs, 3, contexts, np.random.default_rng(seed))))
        p = np.concatenate([two.latency_ms(c, g, ctx) for ctx in seen_ctx])
        result["cpu_gpu_at_top_mem"] = errors(p, truth, unprofiled(est, [(*q, max(tables[-1])) for q in pairs],
                                                                   len(seen_ctx)))
        result["end_to_end"] = {}
        for n in sorted({len(points), 5}):
            pts = plan_grid(tables, n)
            whole = Estimator.fit(parse_profile(sim.profile(pts, 3, contexts, np.random.default_rng(seed),
                                                            end_to_end=True)))
            p = np.concatenate([whole.latency_ms(c, g, ctx, mem_hz=m) for ctx in seen_ctx])
            result["end_to_end"][str(n)] = errors(p, truth, unprofiled(est, pts, len(seen_ctx)))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the points sweep")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", help="comma-separated seeds (overrides --seed): every case at each; the "
                                    "summary and targets are the worst over them, the points sweep uses the first")
    ap.add_argument("--board", action="append", help="only these virtual boards (default: every one)")
    args = ap.parse_args()
    boards = args.board or [b for b, p in available("boards").items() if load_board(p).simulation is not None]
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    cases = [{"seed": seed, **one_case(b, m, None, seed)} for seed in seeds for b in boards for m in MODELS]
    mem_cases = [c for c in cases if c["has_mem"]]
    default_e2e = [c["end_to_end"][str(c["points"])] for c in mem_cases]
    targets = {
        # issue 12, on the virtual boards with a memory domain, over points never profiled
        "memory_boards_per_layer_mape_le_2pct": all(c["estimator"]["mape_pct"] <= 2 for c in mem_cases),
        "memory_boards_end_to_end_mape_le_5pct": all(e["mape_pct"] <= 5 for e in default_e2e),
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
        "memory_boards": {
            "per_layer_mape_pct_worst": max(c["estimator"]["mape_pct"] for c in mem_cases),
            "per_layer_p95_pct_worst": max(c["estimator"]["p95_ape_pct"] for c in mem_cases),
            "end_to_end_mape_pct_worst": max(e["mape_pct"] for e in default_e2e),
            "end_to_end_p95_pct_worst": max(e["p95_ape_pct"] for e in default_e2e),
            "end_to_end_5_points_mape_pct_worst": max(c["end_to_end"]["5"]["mape_pct"] for c in mem_cases),
            "cpu_gpu_at_top_mem_mape_pct_median": float(np.median(
                [c["cpu_gpu_at_top_mem"]["mape_pct"] for c in mem_cases])),
        } if mem_cases else None,
    }
    if mem_cases:  # per memory board and model: each seed's MAPE (P95), per-layer and end to end
        by_case: dict = {}
        for c in mem_cases:
            row = by_case.setdefault(f"{c['board']}/{c['model']}", {})
            fits = [("per_layer", c["estimator"]), *((f"end_to_end_{n}", v) for n, v in c["end_to_end"].items())]
            for label, e in fits:
                row.setdefault(label, []).append([e["mape_pct"], e["p95_ape_pct"]])
        summary["memory_boards_mape_p95_by_seed"] = by_case
    out = {"benchmark": "estimator_accuracy", "seeds": seeds, "summary": summary,
           "targets_met": targets, "cases": cases}
    if not args.quick:
        sweep = {}
        for label, with_mem, counts in (("cpu_gpu", False, (5, 7, 9, 12)), ("cpu_gpu_mem", True, (5, 8, 12))):
            chosen = [b for b in boards if (load_board(b).memory is not None) == with_mem]
            for n in counts:
                mapes = [one_case(b, m, n, seeds[0], end_to_end=False)["estimator"]["mape_pct"]
                         for b in chosen for m in MODELS]
                if mapes:
                    sweep.setdefault(label, {})[str(n)] = {"mape_pct_mean": round(float(np.mean(mapes)), 3),
                                                           "mape_pct_worst": round(float(np.max(mapes)), 3)}
        out["error_vs_points"] = sweep
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
