"""Validate the end-to-end estimator over the memory clock on public, real measurements.

The only public data we found that sweeps both a Jetson's GPU clock and its memory (EMC) clock
for DNN inference, as numbers rather than plots, is a Jetson TX2 sweep published on GitHub
(benchmarks/data/jetson_tx2_emc/SOURCE.md: source, licence, what each column means): 4 TensorRT
models x 13 GPU clocks x 4 EMC clocks, each point the mean GPU latency of a 180 s trtexec run.

Per model the estimator is fitted exactly as a user without per-layer timings would fit it: an
end-to-end profile (``layers: []``, only ``latency_ns``) with ``mem_hz``, built through the one
profile model (estimator.profile.build_profile), at the points our planner chooses
(estimator.planner.plan_grid over the board's domains, 5 to 8 points). It is scored (MAPE, P95,
max of the absolute percentage error) over every grid point that no fit here was given.

Baseline: what a two-domain (CPU x GPU) profiler does on a board whose memory clock it neither
sets nor models: the same planner over CPU x GPU, measured at the top memory level (where a
Jetson's EMC sits under load), and used at every memory level. Scored over the same held-out
points, so the two numbers are comparable.

The data have no CPU axis (the source did not vary or record it); the profile gives the one CPU
level the run used (SOURCE.md), so the plan and the fit see a one-level CPU domain.

    python benchmarks/public_memory_validation.py --out benchmarks/results/public_memory_validation.json
    python benchmarks/public_memory_validation.py --points 8 --models vgg19
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator.model import Estimator  # noqa: E402
from estimator.planner import plan_grid  # noqa: E402
from estimator.profile import build_profile  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "jetson_tx2_emc" / "latency.csv"
COLUMNS = ("model", "gpu_hz", "emc_hz", "gpu_latency_ms")
# The CPU level of the source's runs: not recorded per run; its benchmark script pins the clocks
# with jetson_clocks, which on a TX2 holds the CPUs at their maximum (SOURCE.md). A single level:
# the data have no CPU axis.
CPU_KHZ = 2_035_200
DEVICE = "jetson_tx2 (public data, benchmarks/data/jetson_tx2_emc)"


class DataError(ValueError):
    """The data file breaks its format; the message names the file, the line and the field."""


def load_dataset(path: Path = DATA) -> dict[str, dict[tuple[int, int], float]]:
    """model -> {(gpu_hz, emc_hz): latency_ms}. A malformed file is refused with one line naming
    the file, the line, the field and what it must be."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc.strerror})") from None
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise DataError(f"{path}: line 1: the header must be {','.join(COLUMNS)}, got "
                        f"{','.join(reader.fieldnames or [])!r}")
    data: dict[str, dict[tuple[int, int], float]] = {}
    for line, row in enumerate(reader, start=2):
        try:
            gpu, emc = int(row["gpu_hz"]), int(row["emc_hz"])
            ms = float(row["gpu_latency_ms"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {line}: gpu_hz and emc_hz must be integers (Hz) and "
                            f"gpu_latency_ms a number, got {row}") from None
        if gpu <= 0 or emc <= 0 or not ms > 0:
            raise DataError(f"{path}: line {line}: gpu_hz, emc_hz and gpu_latency_ms must be > 0")
        points = data.setdefault(row["model"], {})
        if (gpu, emc) in points:
            raise DataError(f"{path}: line {line}: model {row['model']!r} has ({gpu}, {emc}) twice")
        points[(gpu, emc)] = ms
    for model, points in data.items():
        gpus, emcs = {g for g, _ in points}, {e for _, e in points}
        if len(points) != len(gpus) * len(emcs):
            raise DataError(f"{path}: model {model!r}: {len(points)} points is not the full grid of "
                            f"{len(gpus)} GPU x {len(emcs)} EMC levels")
    if not data:
        raise DataError(f"{path}: no data rows")
    return data


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict:
    ape = np.abs(pred - meas) / meas * 100
    return {"mape_pct": round(float(ape.mean()), 2), "p95_ape_pct": round(float(np.percentile(ape, 95)), 2),
            "max_ape_pct": round(float(ape.max()), 2)}


def _run(gpu: int, ms: float, mem: int | None = None) -> dict:
    run = {"cpu_khz": CPU_KHZ, "gpu_hz": gpu, "context_len": None, "latency_ns": int(round(ms * 1e6)),
           "layers": []}
    if mem is not None:
        run["mem_hz"] = mem
    return run


def validate_model(model: str, points: dict[tuple[int, int], float], n_points: int) -> dict:
    """Fit the memory-aware end-to-end estimator at ``n_points`` planned points and the CPU x GPU
    baseline at the top memory level; score both over the grid points neither was given."""
    gpus = sorted({g for g, _ in points})
    mems = sorted({m for _, m in points})
    cpu = [CPU_KHZ]
    plan = [(g, m) for _, g, m in plan_grid([cpu, gpus, mems], n_points)]
    prof = build_profile(model, DEVICE, {"cpu": cpu, "gpu": gpus, "mem": mems},
                         [_run(g, points[(g, m)], m) for g, m in plan])
    t0 = time.perf_counter()
    est = Estimator.fit(prof)
    fit_s = time.perf_counter() - t0
    top = mems[-1]
    base_plan = [(g, top) for _, g in plan_grid([cpu, gpus], n_points)]
    base = Estimator.fit(build_profile(model, DEVICE, {"cpu": cpu, "gpu": gpus},
                                       [_run(g, points[(g, m)]) for g, m in base_plan]))
    trained = set(plan) | set(base_plan)
    held = sorted(p for p in points if p not in trained)
    g = np.array([p[0] for p in held], dtype=float)
    m = np.array([p[1] for p in held], dtype=float)
    c = np.full(len(held), float(CPU_KHZ))
    meas = np.array([points[p] for p in held])
    pred = np.ravel(est.latency_ms(c, g, None, mem_hz=m))
    pred_base = np.ravel(base.latency_ms(c, g, None))
    at_top_gpu = {mm: points[(gpus[-1], mm)] for mm in mems}
    return {
        "model": model, "grid": f"{len(gpus)} GPU x {len(mems)} EMC levels", "profiled_points": len(plan),
        "plan": [{"gpu_hz": g_, "mem_hz": m_} for g_, m_ in plan],
        "heldout_points": len(held), "heldout": [{"gpu_hz": int(a), "mem_hz": int(b)} for a, b in held],
        "memory_sensitivity_at_top_gpu": round(at_top_gpu[mems[0]] / at_top_gpu[mems[-1]], 3),
        "fit_mape_pct": est.data.training["fit_mape_pct"], "fit_s": round(fit_s, 2),
        "end_to_end_with_memory": _errors(pred, meas),
        "cpu_x_gpu_at_top_memory_baseline": _errors(pred_base, meas),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="CSV with columns " + ",".join(COLUMNS))
    ap.add_argument("--models", nargs="*", help="models of the data file (default: all)")
    ap.add_argument("--points", type=int, nargs="*", default=[5, 6, 7, 8],
                    help="planned points per fit, 5-8 (default: each of 5 6 7 8)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    try:
        data = load_dataset(args.data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models = args.models or list(data)
    unknown = [m for m in models if m not in data]
    if unknown:
        print(f"error: --models: {', '.join(unknown)} not in {args.data} (it has {', '.join(data)})",
              file=sys.stderr)
        return 2
    bad = [n for n in args.points if not 3 <= n <= 52]
    if bad:
        print(f"error: --points: {bad} out of range (3..52; the planner's default is 8)", file=sys.stderr)
        return 2
    results = {}
    for n in args.points:
        per_model = [validate_model(m, data[m], n) for m in models]
        for r in per_model:  # the point lists are for the file, not the summary
            r.pop("heldout")
        results[str(n)] = {
            "models": per_model,
            "median_mape_pct": {
                "end_to_end_with_memory": round(float(np.median(
                    [r["end_to_end_with_memory"]["mape_pct"] for r in per_model])), 2),
                "cpu_x_gpu_at_top_memory_baseline": round(float(np.median(
                    [r["cpu_x_gpu_at_top_memory_baseline"]["mape_pct"] for r in per_model])), 2),
            },
        }
    out = {"benchmark": "public_memory_validation", "data": str(args.data.name),
           "source": "github.com/thynics/jetson_dvfs profiling/data_transfer_all (see SOURCE.md)",
           "host": platform.node(), "python": platform.python_version(), "by_points": results}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
