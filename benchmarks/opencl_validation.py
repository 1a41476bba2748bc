"""Validate profiler + estimator on a real asynchronous CPU-GPU system, with emulated DVFS.

On a machine whose clocks must not be touched (the lent NVIDIA GPU), frequencies are emulated
faithfully to what DVFS does:

* a CPU at f/k: after every launch, and around every host operator, the host does (k - 1) x the
  work it just measured (busy-waiting), so all host-side time stretches by k;
* a GPU at f/k: every kernel does k x its arithmetic (a dependent FMA chain per work-item,
  proportional to the item's own work) while reading and writing the same bytes, so the
  compute-bound part stretches and the memory-bound part does not.

The emulated frequency tables are f_max / k. The model is profiled at the 5 planned pairs (corners
and centre), the estimator is fitted, and measured latency (median of repeats) is compared with the
prediction at every other pair of the grid, which the estimator never saw. Profile runs and test
runs are interleaved in one shuffled schedule so that slow drifts of a shared machine do not bias
one against the other. Naive scaling (the
fastest pair's latency x f_max/f of the bound side) is the baseline. Prints JSON (and writes it to
--out): date, device, MAPE and P95 per model.

    python benchmarks/opencl_validation.py --device NVIDIA --out results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvfs_schema.loading import load_model_spec  # noqa: E402
from estimator.baselines import naive_scaling  # noqa: E402
from estimator.model import Estimator  # noqa: E402
from estimator.planner import plan_points  # noqa: E402
from estimator.profile import (
    FORMAT,  # noqa: E402
    parse_profile,  # noqa: E402
)
from governor.profiler.runner import ModelRunner, select_device  # noqa: E402
from governor.profiler.sweep import run_record  # noqa: E402

CPU_MAX_KHZ, GPU_MAX_HZ = 3_000_000, 1_980_000_000
CPU_SCALES = [1.0, 1.2, 1.5, 1.8, 2.2, 2.6, 3.0]
GPU_SCALES = [1.0, 1.3, 1.7, 2.2, 3.0, 4.0]


def tables() -> tuple[dict[int, float], dict[int, float]]:
    cpu = {int(round(CPU_MAX_KHZ / k)): k for k in CPU_SCALES}
    gpu = {int(round(GPU_MAX_HZ / k)): k for k in GPU_SCALES}
    return cpu, gpu


def validate(model: str, device, repeats: int, test_repeats: int, contexts: list[int] | None,
             warm_s: float = 5.0) -> dict:
    spec = load_model_spec(model)
    contexts = (contexts or spec.profile_context_len or None) if spec.kind == "language_model" else None
    runner = ModelRunner(spec, device, max_context=max(contexts or [0]))
    cpu, gpu = tables()
    planned = plan_points(sorted(cpu), sorted(gpu), 5)
    # The GPU idles at a low clock and boosts under load (we may not pin it): keep it busy for a
    # while first, so profile and test points see the same clocks.
    t_warm = time.time()
    while time.time() - t_warm < warm_s:
        runner.run((contexts or [None])[-1])
    t0 = time.time()
    # Profile runs and test measurements interleaved in one shuffled schedule: the machine's slow
    # drifts (its own host clocks, other tenants) then hit both alike instead of biasing one.
    tests = [(c, g) for c in sorted(cpu) for g in sorted(gpu) if (c, g) not in planned]
    schedule = [("profile", c, g, ctx) for c, g in planned for ctx in contexts or [None] for _ in range(repeats)]
    schedule += [("test", c, g, ctx) for c, g in tests for ctx in contexts or [None] for _ in range(test_repeats)]
    runs, measured, clamped, uncertainty = [], {}, 0, []
    for i in np.random.default_rng(0).permutation(len(schedule)):
        role, c, g, ctx = schedule[i]
        t = runner.run(ctx, cpu[c], gpu[g])
        if role == "profile":
            runs.append(run_record(t, c, g, ctx))
            clamped += t.clamped
            uncertainty.append(runner.offset_uncertainty_ns)
        else:
            measured.setdefault((c, g, ctx), []).append(t.latency_ns / 1e6)
    profile = parse_profile({"format": FORMAT, "model": spec.name, "device": device.name.strip(),
                             "frequencies": {"cpu_khz": sorted(cpu), "gpu_hz": sorted(gpu)}, "runs": runs})
    est = Estimator.fit(profile)
    rows = []
    for (c, g, ctx), lats in measured.items():
        rows.append({"cpu_khz": c, "gpu_hz": g, "context_len": ctx, "measured_ms": round(float(np.median(lats)), 4),
                     "estimated_ms": round(float(est.latency_ms(c, g, ctx)[0]), 4),
                     "naive_ms": round(float(naive_scaling(profile, c, g, ctx)), 4)})
    alignment = {"uncertainty_ns": int(np.median(uncertainty)), "clamped_intervals": clamped}
    meas = np.array([r["measured_ms"] for r in rows])

    def err(key):
        ape = np.abs(np.array([r[key] for r in rows]) - meas) / meas * 100
        return {"mape_pct": round(float(ape.mean()), 2), "p95_ape_pct": round(float(np.percentile(ape, 95)), 2)}

    fastest = min(rows, key=lambda r: r["measured_ms"])
    slowest = max(rows, key=lambda r: r["measured_ms"])
    bd = est.breakdown(CPU_MAX_KHZ, GPU_MAX_HZ, (contexts or [None])[0])
    return {
        "model": model, "layers": len(spec.flat_layers()), "profiled_pairs": len(planned),
        "profiled_runs": len(profile.runs), "test_points": len(rows),
        "measured_ms_range": [fastest["measured_ms"], slowest["measured_ms"]],
        "at_fastest_pair": {"host_busy_ms": round(float(bd.host_busy_ms[0]), 3),
                            "gpu_busy_ms": round(float(bd.gpu_busy_ms[0]), 3),
                            "bubble_ms": round(float(bd.bubble_ms[0]), 3)},
        "clock_alignment": alignment,
        "estimator": err("estimated_ms"), "naive": err("naive_ms"),
        "seconds": round(time.time() - t0, 1), "points": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", help="OpenCL device (part of its name or P:D)")
    ap.add_argument("--models", default="smollm_135m,mobilenet_v2,yolo_tiny")
    ap.add_argument("--contexts", default="16,64",
                    help="language models: context lengths (short: the decode step is launch-bound)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--test-repeats", type=int, default=7)
    ap.add_argument("--out")
    args = ap.parse_args()
    device, skipped = select_device(args.device)
    out = {
        "benchmark": "opencl_validation",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device.name.strip(), "driver": device.driver_version, "platform": device.platform.name.strip(),
        "host": platform.node(), "skipped_devices": skipped,
        "emulation": {"cpu_max_khz": CPU_MAX_KHZ, "gpu_max_hz": GPU_MAX_HZ, "cpu_scales": CPU_SCALES,
                      "gpu_scales": GPU_SCALES},
        "models": [validate(m, device, args.repeats, args.test_repeats, [int(c) for c in args.contexts.split(",")])
                   for m in args.models.split(",")],
    }
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    summary = [{k: m[k] for k in ("model", "test_points", "estimator", "naive", "measured_ms_range")}
               for m in out["models"]]
    print(json.dumps({"device": out["device"], "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
