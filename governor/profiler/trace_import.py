"""Import Chrome/Perfetto JSON traces of CPU launches and GPU kernels into the profile format.

The common case is PyTorch's profiler (``prof.export_chrome_trace``), which is how Jetson users
profile (no OpenCL there): record one trace per planned frequency pair, then merge them here.

What is read:

* runs: each ``user_annotation`` event (``record_function``) whose name matches ``--step`` (by
  default any) is one inference; without annotations the whole trace is one run;
* GPU layers: ``kernel`` (and ``gpu_memset``) events on the device, each tied to the host call
  that launched it (``cudaLaunchKernel`` & co.) by ``args.correlation``; the layer is named after
  the operator that launched it (``External id``) and the kernel;
* host layers: top-level ``cpu_op`` events that launch nothing and end after the device drained
  (post-processing such as top-k or NMS on the CPU); their host time starts when the device had
  drained.

All timestamps in these traces are on one clock (microseconds); they become ns from the start of
the run. Kernels from several streams that overlap cannot be one in-order queue and are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from estimator.profile import Profile, build_profile

LAUNCH_NAMES = re.compile(r"^(cuda|cu)(LaunchKernel|LaunchKernelExC|LaunchCooperativeKernel|MemsetAsync|"
                          r"GraphLaunch)")
GPU_CATS = {"kernel", "gpu_memset"}
OVERLAP_TOLERANCE_US = 1.0  # CUPTI timestamps of back-to-back kernels can overlap by a fraction of this


class TraceError(ValueError):
    """A trace this importer cannot turn into a valid profile; the message says where and why."""


@dataclass(frozen=True)
class TracedRun:
    """One file and the clocks the user says were in force while it was recorded (``gpu_hz`` None on
    a board without a GPU, ``mem_hz`` None when the memory level is not given)."""

    source: str
    cpu_khz: int
    gpu_hz: int | None
    context_len: int | None
    mem_hz: int | None = None


def _short(kernel: str) -> str:
    name = kernel.split("(")[0].split("<")[0].strip()
    name = name.removeprefix("void ").strip()
    return name.split("::")[-1] or kernel[:40]


def runs_from_trace(trace: dict, source: str, step_pattern: str | None = None) -> list[dict]:
    """Runs (layers + latency, no frequencies yet) from one decoded Chrome trace."""
    events = trace.get("traceEvents", trace if isinstance(trace, list) else None)
    if not isinstance(events, list):
        raise TraceError(f"{source}: not a Chrome trace (no traceEvents list)")
    complete = [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "ts" in e]
    launches = {e["args"]["correlation"]: e for e in complete
                if e.get("cat") == "cuda_runtime" and LAUNCH_NAMES.match(e.get("name", ""))
                and "correlation" in e.get("args", {})}
    kernels = sorted((e for e in complete if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    cpu_ops = [e for e in complete if e.get("cat") == "cpu_op"]
    op_by_external = {}
    for op in sorted(cpu_ops, key=lambda e: -e.get("dur", 0)):  # innermost op wins
        ext = op.get("args", {}).get("External id")
        if ext is not None:
            op_by_external[ext] = op["name"]
    pattern = re.compile(step_pattern) if step_pattern else None
    steps = sorted((e for e in complete if e.get("cat") == "user_annotation"
                    and (pattern is None or pattern.search(e["name"]))), key=lambda e: e["ts"])
    if not steps:
        first = min(e["ts"] for e in complete)
        last = max(e["ts"] + e.get("dur", 0) for e in complete)
        steps = [{"name": "trace", "ts": first, "dur": last - first}]
    runs = []
    for step in steps:
        t0, t1 = step["ts"], step["ts"] + step["dur"]
        runs.append(_one_run(step, t0, t1, kernels, launches, cpu_ops, op_by_external, source))
    return runs


def _one_run(step, t0, t1, kernels, launches, cpu_ops, op_by_external, source) -> dict:
    where = f"{source}, step {step['name']!r}"
    items = []
    for k in kernels:
        launch = launches.get(k.get("args", {}).get("correlation"))
        if launch is None or not (t0 <= launch["ts"] <= t1):
            continue
        ext = launch.get("args", {}).get("External id")
        op = op_by_external.get(ext, "")
        items.append(("gpu", launch["ts"], {
            "name": f"{op}:{_short(k['name'])}" if op else _short(k["name"]),
            "cpu": (launch["ts"], launch["ts"] + launch.get("dur", 0)),
            "gpu": (k["ts"], k["ts"] + k.get("dur", 0)),
        }))
    if not items:
        raise TraceError(f"{where}: no GPU kernels launched inside it")
    launch_spans = [it[2]["cpu"] for it in items]
    # top-level host ops in the step that launch nothing
    in_step = [op for op in cpu_ops if t0 <= op["ts"] and op["ts"] + op.get("dur", 0) <= t1]
    top = [op for op in in_step if not any(
        o is not op and o["ts"] <= op["ts"] and op["ts"] + op["dur"] <= o["ts"] + o["dur"] and o["dur"] > op["dur"]
        for o in in_step)]
    for op in top:
        a, b = op["ts"], op["ts"] + op.get("dur", 0)
        if any(a <= s <= b for s, _ in launch_spans):
            continue
        items.append(("cpu", a, {"name": op["name"], "cpu": (a, b)}))
    items.sort(key=lambda it: it[1])
    layers = []
    device_free = t0
    host_free = t0
    ns = lambda us: int(round((us - t0) * 1000))  # noqa: E731
    for kind, _, it in items:
        c0, c1 = it["cpu"]
        c0 = max(c0, host_free)
        if kind == "gpu":
            g0, g1 = it["gpu"]
            if device_free - OVERLAP_TOLERANCE_US <= g0 < device_free:
                g0 = device_free  # timestamp rounding between back-to-back kernels of one stream
            if g0 < device_free:
                raise TraceError(f"{where}: kernel {it['name']!r} overlaps the previous one (several "
                                 "streams?); the profile format models one in-order queue")
            layers.append({"name": it["name"], "kind": "gpu", "cpu_start_ns": ns(c0), "cpu_end_ns": ns(c1),
                           "gpu_start_ns": ns(max(g0, c0)), "gpu_end_ns": ns(max(g1, g0, c0))})
            device_free = max(device_free, g1)
        else:
            if c1 <= device_free:  # done while kernels still ran: not a fallback, just host code
                continue
            c0 = max(c0, device_free)
            layers.append({"name": it["name"], "kind": "cpu", "cpu_start_ns": ns(c0), "cpu_end_ns": ns(c1)})
        host_free = max(host_free, c1)
    end = max(t1, device_free, host_free)
    return {"latency_ns": ns(end), "layers": layers, "step": step["name"]}


def merge(traced: list[tuple[TracedRun, list[dict]]], model: str, device: str,
          cpu_table: list[int] | None = None, gpu_table: list[int] | None = None,
          mem_table: list[int] | None = None, imported_from: str = "Chrome trace (PyTorch profiler)") -> Profile:
    """One profile from the runs of several traces (one per frequency point), built and checked by
    the profile model (``estimator.profile.build_profile``) like every profile our tools write.
    Each table is the one given joined with the values the runs were labelled with; a memory axis
    appears when runs carry ``mem_hz`` (then every run must)."""
    runs = []
    reference = None
    for meta, items in traced:
        for r in items:
            signature = [(x["name"], x["kind"]) for x in r["layers"]]
            if reference is None:
                reference = (signature, meta.source, r["step"])
            elif signature != reference[0]:
                i = next((j for j, (a, b) in enumerate(zip(signature, reference[0], strict=False)) if a != b),
                         min(len(signature), len(reference[0])))
                raise TraceError(
                    f"{meta.source}, step {r['step']!r}: layer {i} differs from {reference[1]}, step "
                    f"{reference[2]!r} ({signature[i] if i < len(signature) else 'missing'} vs "
                    f"{reference[0][i] if i < len(reference[0]) else 'missing'}); every run must launch "
                    "the same kernels (fix the model's algorithm choices, e.g. cudnn.benchmark=False)")
            run = {"cpu_khz": meta.cpu_khz, "gpu_hz": meta.gpu_hz, "context_len": meta.context_len,
                   "latency_ns": r["latency_ns"], "layers": r["layers"], "source": f"{meta.source}#{r['step']}"}
            if meta.mem_hz is not None:
                run["mem_hz"] = meta.mem_hz
            runs.append(run)
    given = {"cpu": cpu_table, "gpu": gpu_table, "mem": mem_table}
    tables = {name: sorted(set(given[name] or []) | {r[f"{name}_{unit}"] for r in runs
                                                      if r.get(f"{name}_{unit}") is not None})
              for name, unit in (("cpu", "khz"), ("gpu", "hz"), ("mem", "hz"))}
    return build_profile(model, device, tables, runs, imported_from=imported_from)
