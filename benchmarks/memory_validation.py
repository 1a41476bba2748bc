"""Validate profiling over three domains (CPU, GPU, memory) on a real OpenCL device, with every
clock emulated so that none of the machine's real clocks is touched.

* a CPU at f/k: the host does (k - 1) x the work it just measured after every launch and host
  operator (busy-waiting), as in benchmarks/opencl_validation.py;
* a GPU at f/k: every kernel does k x its arithmetic on the same bytes;
* a memory at f/k: every kernel (and host operator) moves k x its bytes with the same arithmetic:
  the extra (k - 1) x reads come from a ring larger than the caches, coalesced, so a streaming
  kernel slows by about k and a compute-bound one hardly at all (governor/profiler/kernels.py).

Each model is profiled at the planned points (estimator.planner: 8 over three domains; the stored
H200 run of 2026-11-24 used the 7-point plan of that day, its first 7) and measured (median of
repeats) at every other point of the emulated grid, never profiled. Profile runs and held-out runs
are interleaved in one shuffled schedule so that the machine's slow drifts hit both alike.
Written to --profiles-dir: per model a per-layer profile and an end-to-end one (the same runs
with ``layers: []``: what a timer around the inference call gives), and the held-out
measurements, so that a later estimator can be refitted and scored without the device.

The estimator is then tried: if it fits the memory domain (it predicts with ``mem_hz`` and its
predictions change with it), MAPE and P95 over the held-out points are reported; otherwise the
error it gave is. A baseline that ignores memory (today's CPU x GPU fit on the runs at the fastest
memory level, as a two-domain profiler would take them) shows what the third domain is worth.
Prints JSON (and writes it to --out).

    python benchmarks/memory_validation.py --quick                      # PoCL, a minute or two
    python benchmarks/memory_validation.py --device NVIDIA --out benchmarks/results/memory_validation.json \\
        --profiles-dir benchmarks/results/memory_profiles
    python benchmarks/memory_validation.py --refit benchmarks/results/memory_profiles_h200 \\
        --out benchmarks/results/memory_validation_h200_refit.json     # no device: today's estimator
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvfs_schema.loading import load_model_spec  # noqa: E402
from estimator.model import Estimator  # noqa: E402
from estimator.planner import plan_grid  # noqa: E402
from estimator.profile import FORMAT, parse_profile  # noqa: E402
from governor.profiler.runner import ModelRunner, select_device  # noqa: E402
from governor.profiler.sweep import run_record  # noqa: E402

CPU_MAX_KHZ, GPU_MAX_HZ, MEM_MAX_HZ = 3_000_000, 1_980_000_000, 3_200_000_000
FULL = {"cpu": [1.0, 1.6, 2.5], "gpu": [1.0, 1.5, 2.2, 3.0], "mem": [1.0, 1.4, 2.0, 3.0]}
QUICK = {"cpu": [1.0, 2.0], "gpu": [1.0, 2.0, 3.0], "mem": [1.0, 1.7, 3.0]}


def tables(scales: dict[str, list[float]]) -> dict[str, dict[int, float]]:
    """Emulated frequency tables: f_max / k -> k, per domain."""
    top = {"cpu": CPU_MAX_KHZ, "gpu": GPU_MAX_HZ, "mem": MEM_MAX_HZ}
    return {d: {int(round(top[d] / k)): k for k in ks} for d, ks in scales.items()}


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict:
    ape = np.abs(pred - meas) / meas * 100
    return {"mape_pct": round(float(ape.mean()), 2), "p95_ape_pct": round(float(np.percentile(ape, 95)), 2)}


def _memory_predictor(profile_dict: dict):
    """A function (cpu, gpu, mem, ctx) -> ms from an estimator fitted over the memory domain, or
    the reason there is none (the fit failed, or the estimator does not take or use ``mem_hz``)."""
    try:
        est = Estimator.fit(parse_profile(profile_dict))
    except Exception as exc:  # noqa: BLE001 - reported, not hidden: the estimator may not know mem yet
        return None, f"fit failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    if "mem_hz" not in inspect.signature(est.latency_ms).parameters:
        return None, "the estimator's latency_ms takes no mem_hz: it does not model the memory domain yet"

    def predict(c, g, m, ctx):
        return float(np.ravel(est.latency_ms(c, g, ctx, mem_hz=m))[0])

    mems = profile_dict["frequencies"]["mem_hz"]
    r = profile_dict["runs"][0]
    if predict(r["cpu_khz"], r["gpu_hz"], mems[0], r["context_len"]) == predict(
            r["cpu_khz"], r["gpu_hz"], mems[-1], r["context_len"]):
        return None, "the estimator's predictions do not change with mem_hz"
    return predict, None


def _ignore_memory_baseline(profile_dict: dict, mem_top: int):
    """Today's CPU x GPU estimator, fitted on the runs at the fastest memory level only."""
    runs = [{k: v for k, v in r.items() if k != "mem_hz"} for r in profile_dict["runs"] if r["mem_hz"] == mem_top]
    freqs = {k: v for k, v in profile_dict["frequencies"].items() if k != "mem_hz"}
    try:
        est = Estimator.fit(parse_profile({**profile_dict, "frequencies": freqs, "runs": runs}))
    except Exception as exc:  # noqa: BLE001
        return None, f"fit failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return (lambda c, g, m, ctx: float(np.ravel(est.latency_ms(c, g, ctx))[0])), None


def validate(model: str, device, grid: dict[str, dict[int, float]], repeats: int, test_repeats: int,
             contexts: list[int] | None, warm_s: float, profiles_dir: Path | None) -> dict:
    spec = load_model_spec(model)
    contexts = (contexts or spec.profile_context_len or None) if spec.kind == "language_model" else None
    runner = ModelRunner(spec, device, max_context=max(contexts or [0]))
    cpu, gpu, mem = grid["cpu"], grid["gpu"], grid["mem"]
    planned = plan_grid([sorted(cpu), sorted(gpu), sorted(mem)])
    t_warm = time.time()  # GPUs idle low and boost under load: keep it busy first
    while time.time() - t_warm < warm_s:
        runner.run((contexts or [None])[-1], mem_scale=max(mem.values()))
    t0 = time.time()
    ctxs = contexts or [None]
    tests = [(c, g, m) for c in sorted(cpu) for g in sorted(gpu) for m in sorted(mem) if (c, g, m) not in planned]
    schedule = [("profile", p, ctx) for p in planned for ctx in ctxs for _ in range(repeats)]
    schedule += [("test", p, ctx) for p in tests for ctx in ctxs for _ in range(test_repeats)]
    runs, measured, every, clamped = [], {}, {}, 0
    for i in np.random.default_rng(0).permutation(len(schedule)):
        role, (c, g, m), ctx = schedule[i]
        t = runner.run(ctx, cpu[c], gpu[g], mem_scale=mem[m])
        every.setdefault((c, g, m, ctx), []).append(t.latency_ns / 1e6)
        if role == "profile":
            runs.append(run_record(t, c, g, ctx, m))
            clamped += t.clamped
        else:
            measured.setdefault((c, g, m, ctx), []).append(t.latency_ns / 1e6)
    seconds = round(time.time() - t0, 1)
    order = {p: i for i, p in enumerate(planned)}  # profile runs in plan order, as a sweep writes them
    runs.sort(key=lambda r: (order[(r["cpu_khz"], r["gpu_hz"], r["mem_hz"])], r["context_len"] or 0))
    freqs = {"cpu_khz": sorted(cpu), "gpu_hz": sorted(gpu), "mem_hz": sorted(mem)}
    emulation = "clocks emulated at f_max/k (benchmarks/memory_validation.py); the device's real clocks untouched"
    layered = {"format": FORMAT, "model": spec.name, "device": device.name.strip(), "frequencies": freqs,
               "runs": runs, "emulation": emulation}
    e2e = {**layered, "runs": [{**r, "layers": []} for r in runs],
           "timing": "end to end: the same runs as the per-layer profile with their layers dropped"}
    points = [{"cpu_khz": c, "gpu_hz": g, "mem_hz": m, "context_len": ctx,
               "measured_ms": round(float(np.median(v)), 4), "repeats": len(v)}
              for (c, g, m, ctx), v in sorted(measured.items(), key=lambda kv: (kv[0][:3], kv[0][3] or 0))]
    if profiles_dir is not None:
        profiles_dir.mkdir(parents=True, exist_ok=True)
        (profiles_dir / f"{model}.layers.profile.json").write_text(json.dumps(layered))
        (profiles_dir / f"{model}.e2e.profile.json").write_text(json.dumps(e2e))
        (profiles_dir / f"{model}.heldout.json").write_text(json.dumps({"model": model, "points": points}))
    meas = np.array([p["measured_ms"] for p in points])
    result = {"model": model, "layers": len(spec.flat_layers()), "profiled_points": len(planned),
              "profiled_runs": len(runs), "heldout_points": len(points), "clamped_intervals": clamped,
              "measured_ms_range": [round(float(meas.min()), 4), round(float(meas.max()), 4)],
              "seconds": seconds}
    fastest = (max(cpu), max(gpu))
    by_mem = {m: float(np.median(v)) for (c, g, m, ctx), v in every.items()
              if (c, g) == fastest and ctx == ctxs[0]}
    if len(by_mem) >= 2:  # what the emulated memory clock does at the fastest CPU and GPU (all runs)
        lo, hi = min(by_mem), max(by_mem)
        result["memory_sensitivity"] = {"mem_hz": [lo, hi], "slowdown": round(by_mem[lo] / by_mem[hi], 3)}
    result.update(score(layered, e2e, points, max(mem)))
    return result


def score(layered: dict, e2e: dict, points: list[dict], mem_top: int, worst: int = 0) -> dict:
    """MAPE and P95 over the held-out ``points`` of the estimator fitted per layer and end to end,
    and of the ignore-memory baseline; with ``worst`` > 0 each fit also lists its worst points
    (to see where a miss comes from, not to tune on them)."""
    meas = np.array([p["measured_ms"] for p in points])
    result = {}
    fits = (("per_layer", *_memory_predictor(layered)), ("end_to_end", *_memory_predictor(e2e)),
            ("ignore_memory_baseline", *_ignore_memory_baseline(layered, mem_top)))
    for name, predict, why in fits:
        if predict is None:
            result[name] = {"not_fitted": why}
            continue
        pred = np.array([predict(p["cpu_khz"], p["gpu_hz"], p["mem_hz"], p["context_len"]) for p in points])
        result[name] = _errors(pred, meas)
        if worst:
            ape = np.abs(pred - meas) / meas * 100
            result[name]["worst_points"] = [
                {**{k: points[i][k] for k in ("cpu_khz", "gpu_hz", "mem_hz", "context_len", "measured_ms")},
                 "predicted_ms": round(float(pred[i]), 4), "ape_pct": round(float(ape[i]), 2)}
                for i in np.argsort(-ape)[:worst]]
    return result


def _repeat_spread_pct(profile: dict) -> float:
    """Median over the profiled (point, context) groups of (max - min) / median of their repeats:
    the run-to-run noise the fit and the held-out medians carry."""
    groups: dict[tuple, list[float]] = {}
    for r in profile["runs"]:
        key = (r["cpu_khz"], r["gpu_hz"], r["mem_hz"], r["context_len"])
        groups.setdefault(key, []).append(r["latency_ns"])
    spreads = [(max(v) - min(v)) / float(np.median(v)) * 100 for v in groups.values() if len(v) > 1]
    return round(float(np.median(spreads)), 2) if spreads else 0.0


def refit(directory: Path, models: list[str]) -> list[dict]:
    """Score today's estimator on profiles saved by an earlier run (``--profiles-dir``), without
    the device: per model the per-layer and end-to-end fits over its held-out points."""
    results = []
    for model in models:
        files = {kind: directory / f"{model}.{kind}.json" for kind in ("layers.profile", "e2e.profile", "heldout")}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            sys.exit(f"--refit {directory}: model {model}: missing {', '.join(missing)}")
        layered, e2e, heldout = (json.loads(f.read_text()) for f in files.values())
        points = heldout["points"]
        meas = np.array([p["measured_ms"] for p in points])
        result = {"model": model, "profiled_points": len({(r["cpu_khz"], r["gpu_hz"], r["mem_hz"])
                                                          for r in layered["runs"]}),
                  "profiled_runs": len(layered["runs"]), "heldout_points": len(points),
                  "measured_ms_range": [round(float(meas.min()), 4), round(float(meas.max()), 4)],
                  "profile_repeat_spread_pct": _repeat_spread_pct(layered)}
        result.update(score(layered, e2e, points, max(layered["frequencies"]["mem_hz"]), worst=5))
        results.append(result)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", help="OpenCL device (part of its name or P:D)")
    ap.add_argument("--models", default="mobilenet_v2,yolo_tiny,smollm_135m")
    ap.add_argument("--contexts", default="16,64", help="language models: context lengths")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--test-repeats", type=int, default=3)
    ap.add_argument("--warm-s", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true",
                    help="a small grid (2 x 3 x 3), 2 repeats: for a CPU OpenCL device (PoCL)")
    ap.add_argument("--profiles-dir", help="write each model's profiles and held-out measurements here")
    ap.add_argument("--refit", metavar="DIR",
                    help="no device: fit today's estimator to the profiles a run saved in DIR (--profiles-dir) "
                         "and score it on their held-out points")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.refit:
        directory = Path(args.refit)
        if not directory.is_dir():
            sys.exit(f"--refit {directory}: not a directory")
        out = {"benchmark": "memory_validation_refit",
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "profiles_dir": str(directory), "target": "MAPE <= 5% over the held-out points",
               "models": refit(directory, args.models.split(","))}
        text = json.dumps(out, indent=1)
        if args.out:
            Path(args.out).write_text(text)
        print(text)
        return
    scales = QUICK if args.quick else FULL
    repeats, test_repeats = (2, 2) if args.quick else (args.repeats, args.test_repeats)
    device, skipped = select_device(args.device)
    grid = tables(scales)
    out = {
        "benchmark": "memory_validation",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device.name.strip(), "driver": device.driver_version, "platform": device.platform.name.strip(),
        "host": platform.node(), "skipped_devices": skipped,
        "emulation": {"cpu_max_khz": CPU_MAX_KHZ, "gpu_max_hz": GPU_MAX_HZ, "mem_max_hz": MEM_MAX_HZ,
                      **{f"{d}_scales": s for d, s in scales.items()}},
        "repeats": repeats, "test_repeats": test_repeats,
        "models": [validate(m, device, grid, repeats, test_repeats, [int(c) for c in args.contexts.split(",")],
                            0.5 if args.quick else args.warm_s,
                            Path(args.profiles_dir) if args.profiles_dir else None)
                   for m in args.models.split(",")],
    }
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
