"""Import ONNX Runtime's own profiling output (``SessionOptions.enable_profiling``) into a profile.

ONNX Runtime writes a JSON list of Chrome trace events on one host clock (microseconds):

* ``cat: "Session"``, ``name: "model_run"``: one ``InferenceSession.run``, i.e. one run of ours;
* ``cat: "Node"``, ``name: "<node>_kernel_time"``: the host time of one node, with
  ``args.provider`` (the execution provider that ran it) and ``args.op_name``;
* ``cat: "Kernel"`` (builds with CUDA/ROCm profiling): device kernels, each listed after the node
  that launched it (``args.parent_name`` names it in recent releases).

A node with device kernels becomes a GPU layer: its host interval is the launch, its device
interval spans its kernels. A node run by the CPU provider becomes a host layer; in a session
that also uses a GPU it is a fallback, so its host time starts when the device had drained. A
node of a device provider that launched no kernel (a reshape, a view) runs no layer: its host
time counts into the next launch, as the estimator's segments count host time. Runs come from
``model_run`` events; every run must contain the same nodes in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable

from estimator.profile import Profile
from governor.profiler.trace_import import OVERLAP_TOLERANCE_US, TracedRun, TraceError, merge

CPU_PROVIDER = "CPUExecutionProvider"
NODE_SUFFIXES = ("_kernel_time",)
SKIP_SUFFIXES = ("_fence_before", "_fence_after")


def _node_name(event: dict) -> str:
    name = event.get("name", "")
    for suffix in NODE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def runs_from_ort(events: list, source: str, warmup: int = 0) -> tuple[list[dict], set[str]]:
    """Runs (layers + latency) from one decoded ONNX Runtime profile, and the providers seen."""
    if not isinstance(events, list):
        raise TraceError(f"{source}: not an ONNX Runtime profile (expected a JSON list of events)")
    events = [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "ts" in e and "dur" in e]
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if not runs:
        raise TraceError(f"{source}: no 'model_run' events: was the session profiled "
                         "(SessionOptions.enable_profiling = True) and run at least once?")
    if warmup >= len(runs):
        raise TraceError(f"{source}: --warmup {warmup} drops every one of its {len(runs)} runs")
    # kernels belong to the node listed before them (file order), or to args.parent_name
    nodes: list[dict] = []
    kernels: dict[int, list[dict]] = {}
    for e in events:
        cat = e.get("cat")
        if cat == "Node" and not e.get("name", "").endswith(SKIP_SUFFIXES):
            nodes.append(e)
        elif cat == "Kernel" and nodes:
            parent = e.get("args", {}).get("parent_name")
            owner = len(nodes) - 1
            if parent:
                owner = next((i for i in range(len(nodes) - 1, -1, -1) if _node_name(nodes[i]) == parent), owner)
            kernels.setdefault(id(nodes[owner]), []).append(e)
    providers = {n.get("args", {}).get("provider", CPU_PROVIDER) for n in nodes}
    any_kernels = bool(kernels)
    if providers - {CPU_PROVIDER} and not any_kernels:
        raise TraceError(f"{source}: nodes ran on {', '.join(sorted(providers - {CPU_PROVIDER}))} but the file has "
                         "no 'Kernel' events: device times need ONNX Runtime built with CUDA profiling "
                         "(--enable_cuda_profiling) and CUPTI on the library path")
    out = []
    for n, run in enumerate(runs[warmup:], start=warmup):
        t0, t1 = run["ts"], run["ts"] + run["dur"]
        mine = sorted((x for x in nodes if t0 <= x["ts"] and x["ts"] + x["dur"] <= t1), key=lambda x: x["ts"])
        if not mine:
            raise TraceError(f"{source}, run {n}: no node events inside it")
        out.append(_one_run(mine, kernels, t0, t1, f"{source}, run {n}", f"model_run#{n}"))
    return out, providers


def _one_run(nodes: Iterable[dict], kernels: dict[int, list[dict]], t0: float, t1: float, where: str,
             step: str) -> dict:
    layers = []
    host_free = device_free = t0
    ns = lambda us: int(round((us - t0) * 1000))  # noqa: E731
    for node in nodes:
        name = _node_name(node)
        provider = node.get("args", {}).get("provider", CPU_PROVIDER)
        c0, c1 = max(node["ts"], host_free), node["ts"] + node["dur"]
        ks = sorted(kernels.get(id(node), []), key=lambda k: k["ts"])
        if ks:
            g0, g1 = ks[0]["ts"], max(k["ts"] + k["dur"] for k in ks)
            if device_free - OVERLAP_TOLERANCE_US <= g0 < device_free:
                g0 = device_free
            if g0 < device_free:
                raise TraceError(f"{where}: node {name!r}'s kernels overlap the previous node's (several "
                                 "streams?); the profile format models one in-order queue")
            layers.append({"name": name, "kind": "gpu", "cpu_start_ns": ns(c0), "cpu_end_ns": ns(max(c1, c0)),
                           "gpu_start_ns": ns(max(g0, c0)), "gpu_end_ns": ns(max(g1, g0, c0)),
                           "op": node.get("args", {}).get("op_name", "")})
            device_free = max(device_free, g1)
        elif provider == CPU_PROVIDER:
            c0 = max(c0, device_free)  # a fallback waits for the device to drain
            layers.append({"name": name, "kind": "cpu", "cpu_start_ns": ns(c0), "cpu_end_ns": ns(max(c1, c0)),
                           "op": node.get("args", {}).get("op_name", "")})
        else:
            continue  # a device node that launched nothing: its host time goes to the next launch
        host_free = max(host_free, c1)
    end = max(t1, device_free, host_free)
    return {"latency_ns": ns(end), "layers": layers, "step": step}


def import_ort(traced: list[tuple[TracedRun, list]], model: str, device: str | None = None,
               cpu_table: list[int] | None = None, gpu_table: list[int] | None = None,
               warmup: int = 0, mem_table: list[int] | None = None) -> Profile:
    """One profile from ONNX Runtime profiles, one per frequency point (``TracedRun`` says which:
    CPU, GPU and, on a board with a memory domain, the memory level)."""
    parsed = []
    providers: set[str] = set()
    for meta, events in traced:
        runs, seen = runs_from_ort(events, meta.source, warmup)
        providers |= seen
        parsed.append((meta, runs))
    device = device or "onnxruntime:" + "+".join(sorted(providers))
    return merge(parsed, model, device, cpu_table, gpu_table, mem_table,
                 imported_from="ONNX Runtime profiling (SessionOptions.enable_profiling)")
