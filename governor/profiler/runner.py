"""Run a model description as real OpenCL kernels, layer by layer, as an inference runtime does.

GPU layers are enqueued asynchronously (the host does not wait); a host layer first drains the
queue, reads back the previous result and runs its numpy operator. Per layer the runner records
the host enqueue interval (host clock) and the device execution interval (OpenCL profiling events,
device clock), then puts both on the host clock with an offset calibrated by markers.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import numpy as np
import pyopencl as cl

from dvfs_schema.workload import (
    Attention,
    Conv,
    DepthwiseConv,
    Elementwise,
    Gemm,
    HostOp,
    ModelSpec,
    Norm,
    Pool,
    Softmax,
)
from governor.profiler import kernels

MF = cl.mem_flags
PRE_NMS_TOP_K = 300


class DeviceError(RuntimeError):
    """No usable OpenCL device, or one that cannot build our kernels."""


def list_devices() -> list[dict]:
    out = []
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:  # no ICD at all
        raise DeviceError(f"no OpenCL platform: {exc}") from None
    for p, platform in enumerate(platforms):
        for d, dev in enumerate(platform.get_devices()):
            kind = "GPU" if dev.type & cl.device_type.GPU else "CPU" if dev.type & cl.device_type.CPU else "ACC"
            out.append({"id": f"{p}:{d}", "platform": platform.name.strip(), "platform_version": platform.version,
                        "device": dev.name.strip(), "type": kind, "compute_units": dev.max_compute_units,
                        "global_mem_mib": dev.global_mem_size // 2**20})
    return out


def _builds(dev: cl.Device) -> str | None:
    try:
        ctx = cl.Context([dev])
        cl.Program(ctx, kernels.SOURCE).build()
        return None
    except cl.Error as exc:
        return str(exc).splitlines()[0]


def select_device(preference: str | None = None) -> tuple[cl.Device, list[str]]:
    """The device to profile on: ``preference`` ("P:D" or a substring of the device or platform
    name) or the first GPU, else the first CPU, that can build our kernels. Returns it and the
    reasons other candidates were skipped."""
    skipped: list[str] = []
    candidates = []
    for p, platform in enumerate(cl.get_platforms()):
        for d, dev in enumerate(platform.get_devices()):
            name = f"{platform.name.strip()} / {dev.name.strip()}"
            if preference and preference != f"{p}:{d}" and preference.lower() not in name.lower():
                continue
            candidates.append((0 if dev.type & cl.device_type.GPU else 1, p, d, dev, name))
    for _, _, _, dev, name in sorted(candidates, key=lambda c: c[:3]):
        problem = _builds(dev)
        if problem is None:
            return dev, skipped
        skipped.append(f"{name}: {problem}")
    wanted = f" matching {preference!r}" if preference else ""
    raise DeviceError(f"no OpenCL device{wanted} can build the kernels; " + "; ".join(skipped or ["none found"]))


@dataclass
class _Layer:
    name: str
    on_gpu: bool
    run: object  # callable(extra:int, ctx:int|None) -> event | None
    flops_per_item: float = 0.0
    out: object = None  # output buffer
    inputs: tuple = ()  # host copies of the inputs, to check results against numpy
    flops_per_token: float = 0.0  # attention: work per work-item grows with the context


@dataclass
class LayerTiming:
    name: str
    kind: str
    cpu_start_ns: int
    cpu_end_ns: int
    gpu_start_ns: int | None = None
    gpu_end_ns: int | None = None


@dataclass
class RunTiming:
    latency_ns: int
    layers: list[LayerTiming]
    clamped: int = 0
    output: np.ndarray | None = field(default=None, repr=False)


def _drain(queue: cl.CommandQueue, last: cl.Event | None) -> None:
    """Wait for the device to finish by polling the last event, as low-latency runtimes do.

    A blocking clFinish may sleep in the driver and wake milliseconds late (seen on NVIDIA),
    which would put scheduler noise into every host operator and every inference's end."""
    if last is None:
        return
    queue.flush()
    status = cl.event_info.COMMAND_EXECUTION_STATUS
    while last.get_info(status) > 0:  # CL_COMPLETE == 0; errors are negative
        pass
    queue.finish()  # returns at once now; raises if a command failed


def _stretch(start_ns: int, cpu_scale: float) -> int:
    """End of a host interval that began at ``start_ns``, emulating a CPU at f/cpu_scale: the
    host does (cpu_scale - 1) x the work it just measured, busy, before going on."""
    end = time.perf_counter_ns()
    if cpu_scale > 1:
        until = end + int((cpu_scale - 1.0) * (end - start_ns))
        while (end := time.perf_counter_ns()) < until:
            pass
    return end


class ModelRunner:
    """A model's kernels and buffers on one device, ready to run inferences."""

    def __init__(self, spec: ModelSpec, device: cl.Device, max_context: int = 0, seed: int = 0,
                 flush_each_kernel: bool = True) -> None:
        self.spec = spec
        self.device = device
        self.ctx = cl.Context([device])
        self.queue = cl.CommandQueue(self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.prg = cl.Program(self.ctx, kernels.SOURCE).build()
        self.rng = np.random.default_rng(seed)
        self.max_context = max(max_context, max(spec.profile_context_len or [0]))
        self.flush_each_kernel = flush_each_kernel
        self.layers = [self._build(layer) for layer in spec.flat_layers()]
        self.offset_ns, self.offset_uncertainty_ns = self.calibrate()

    # ---- buffers ------------------------------------------------------------------------------
    def _buf(self, shape: tuple[int, ...], data: bool = True) -> tuple[cl.Buffer, np.ndarray | None]:
        host = self.rng.standard_normal(shape, dtype=np.float32) * 0.5 if data else None
        size = int(np.prod(shape)) * 4
        if host is not None:
            return cl.Buffer(self.ctx, MF.READ_ONLY | MF.COPY_HOST_PTR, hostbuf=host), host
        return cl.Buffer(self.ctx, MF.READ_WRITE, size), None

    def _launcher(self, name: str, gsize: tuple[int, ...], *args, ctx_arg: int | None = None):
        """A kernel with its arguments bound once (as runtimes do); the call sets only ``extra``
        (the last argument) and, for attention, the context length, then enqueues it."""
        kernel = cl.Kernel(self.prg, name)
        kernel.set_args(*args, np.int32(0))
        last = len(args)
        q = self.queue

        def run(extra: int, ctx: int | None, _keep=args):  # _keep: buffers must outlive the kernel
            kernel.set_arg(last, np.int32(extra))
            if ctx_arg is not None:
                kernel.set_arg(ctx_arg, np.int32(ctx))
            return cl.enqueue_nd_range_kernel(q, kernel, gsize, None)
        return run

    def _build(self, layer) -> _Layer:
        i32, L = np.int32, self._launcher
        match layer:
            case Conv(h=h, w=w, cin=ci, cout=co, k=k, stride=s):
                x, xh = self._buf((ci, h * s, w * s))
                wt, wh = self._buf((co, ci, k, k))
                y, _ = self._buf((co, h, w), data=False)
                run = L("conv", (w, h, co), x, wt, y, i32(ci), i32(h * s), i32(w * s), i32(co), i32(h), i32(w),
                        i32(k), i32(s))
                return _Layer(layer.name, True, run, 2.0 * ci * k * k, y, (xh, wh))
            case DepthwiseConv(h=h, w=w, c=c, k=k, stride=s):
                x, xh = self._buf((c, h * s, w * s))
                wt, wh = self._buf((c, k, k))
                y, _ = self._buf((c, h, w), data=False)
                run = L("dwconv", (w, h, c), x, wt, y, i32(c), i32(h * s), i32(w * s), i32(h), i32(w), i32(k),
                        i32(s))
                return _Layer(layer.name, True, run, 2.0 * k * k, y, (xh, wh))
            case Gemm(m=m, n=n, k=kk):
                a, ah = self._buf((m, kk))
                b, bh = self._buf((kk, n))
                y, _ = self._buf((m, n), data=False)
                run = L("gemm", (n, m), a, b, y, i32(m), i32(n), i32(kk))
                return _Layer(layer.name, True, run, 2.0 * kk, y, (ah, bh))
            case Elementwise(n=n, inputs=inputs):
                a, ah = self._buf((n,))
                y, _ = self._buf((n,), data=False)
                if inputs >= 2:
                    b, bh = self._buf((n,))
                    run = L("add2", (n,), a, b, y, i32(n))
                    return _Layer(layer.name, True, run, 4.0, y, (ah, bh))
                run = L("silu", (n,), a, y, i32(n))
                return _Layer(layer.name, True, run, 4.0, y, (ah,))
            case Pool(h=h, w=w, c=c, k=k, stride=s):
                x, xh = self._buf((c, h * s, w * s))
                y, _ = self._buf((c, h, w), data=False)
                run = L("maxpool", (w, h, c), x, y, i32(c), i32(h * s), i32(w * s), i32(h), i32(w), i32(k), i32(s))
                return _Layer(layer.name, True, run, float(k * k), y, (xh,))
            case Softmax(rows=r, cols=cols):
                x, xh = self._buf((r, cols))
                y, _ = self._buf((r, cols), data=False)
                run = L("softmax_rows", (r,), x, y, i32(r), i32(cols))
                return _Layer(layer.name, True, run, 5.0 * cols, y, (xh,))
            case Norm(rows=r, n=n):
                x, xh = self._buf((r, n))
                g, gh = self._buf((n,))
                y, _ = self._buf((r, n), data=False)
                run = L("rmsnorm", (r,), x, g, y, i32(r), i32(n))
                return _Layer(layer.name, True, run, 4.0 * n, y, (xh, gh))
            case Attention(heads=hh, kv_heads=kv, head_dim=d):
                cmax = max(self.max_context, 1)
                qb, qh = self._buf((hh, d))
                kc, kh = self._buf((cmax, kv, d))
                vc, vh = self._buf((cmax, kv, d))
                y, _ = self._buf((hh, d), data=False)

                launch = L("attention", (hh,), qb, kc, vc, y, i32(hh), i32(kv), i32(d), i32(1), ctx_arg=7)

                def run(extra, ctx, launch=launch, cmax=cmax):
                    if ctx is None or ctx > cmax or ctx < 1:
                        raise ValueError(f"context_len {ctx} outside 1..{cmax} (the KV cache size)")
                    return launch(extra, ctx)
                return _Layer(layer.name, True, run, 0.0, y, (qh, kh, vh), flops_per_token=4.0 * d)
            case HostOp(kind="nms", n=n):  # fixed boxes: every run does the same work
                centre = self.rng.random((n, 2)) * 400
                size = 10 + self.rng.random((n, 2)) * 60
                boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
                return _Layer(layer.name, False, None, inputs=(boxes,))
            case HostOp(n=n):
                return _Layer(layer.name, False, None, inputs=(self.rng.standard_normal(n).astype(np.float32),))
        raise TypeError(f"cannot build {layer!r}")

    def _read(self, buf: cl.Buffer, limit: int | None = None) -> np.ndarray:
        """Copy a result to the host, waiting by polling (see ``_drain``)."""
        arr = np.empty(min(buf.size // 4, limit or buf.size), np.float32)
        _drain(self.queue, cl.enqueue_copy(self.queue, arr, buf, is_blocking=False))
        return arr

    def output(self, index: int) -> np.ndarray:
        """The result of GPU layer ``index`` from the last run (for checking against numpy)."""
        return self._read(self.layers[index].out)

    def _host_op(self, layer: HostOp, built: _Layer, previous: np.ndarray | None) -> np.ndarray:
        n = layer.n
        src = previous.ravel() if previous is not None and previous.size else built.inputs[-1]
        data = np.resize(src, n).astype(np.float32)
        match layer.kind:
            case "nms":  # like detectors' post-processing: the best PRE_NMS_TOP_K boxes enter NMS
                scores = 1 / (1 + np.exp(-data))
                top = np.argpartition(-scores, min(PRE_NMS_TOP_K, n - 1))[:PRE_NMS_TOP_K]
                return top[kernels.nms(built.inputs[0][top], scores[top])].astype(np.float32)
            case "decode":
                return 1 / (1 + np.exp(-data))
            case "resize":
                return np.repeat(data, 2)[:n]
            case "concat":
                return np.concatenate([data[: n // 2], data[: n - n // 2]])
            case "sample":
                top = np.argpartition(-data, 40)[:40]
                return top[np.argsort(-data[top])].astype(np.float32)
        raise ValueError(layer.kind)

    # ---- clocks -------------------------------------------------------------------------------
    def calibrate(self, samples: int = 25) -> tuple[int, int]:
        """Device-minus-host clock offset (ns) and its uncertainty, from markers on an idle queue.

        Each marker executed between two host readings t0 < t1, so offset lies in
        [dev_end - t1, dev_start - t0]; the intersection over samples bounds it, its midpoint is
        used and half its width is the uncertainty."""
        lo, hi = -np.inf, np.inf
        best = None
        a = cl.Buffer(self.ctx, MF.READ_WRITE, 64)
        marker = self._launcher("add2", (1,), a, a, a, np.int32(1))
        for _ in range(samples):
            self.queue.finish()
            t0 = time.perf_counter_ns()
            ev = marker(0, None)
            ev.wait()
            t1 = time.perf_counter_ns()
            s_lo, s_hi = ev.profile.end - t1, ev.profile.start - t0
            lo, hi = max(lo, s_lo), min(hi, s_hi)
            if best is None or s_hi - s_lo < best[1] - best[0]:
                best = (s_lo, s_hi)
        if lo > hi:  # clocks drift or the device timestamps jitter: use the tightest sample
            lo, hi = best
        return int((lo + hi) / 2), int((hi - lo) / 2)

    # ---- one inference -----------------------------------------------------------------------
    def run(self, context_len: int | None = None, cpu_scale: float = 1.0, gpu_scale: float = 1.0,
            keep_output: bool = False) -> RunTiming:
        """One inference. ``cpu_scale``/``gpu_scale`` >= 1 emulate a CPU/GPU at f/scale (see the
        module docs of benchmarks/opencl_validation.py); 1 means as the hardware is."""
        q = self.queue
        q.finish()
        # the device clock drifts against the host's: re-anchor before every inference
        self.offset_ns, self.offset_uncertainty_ns = self.calibrate(samples=5)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection in the middle would show up as a slow layer
        try:
            return self._run(context_len, cpu_scale, gpu_scale, keep_output)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, context_len: int | None, cpu_scale: float, gpu_scale: float, keep_output: bool) -> RunTiming:
        q = self.queue
        host: list[tuple[int, int]] = []
        events: list[cl.Event | None] = []
        previous = None
        last_event = None
        t_start = time.perf_counter_ns()
        for spec_layer, layer in zip(self.spec.flat_layers(), self.layers, strict=True):
            if layer.on_gpu:
                work = layer.flops_per_item + layer.flops_per_token * (context_len or 0)
                extra = int(round((gpu_scale - 1.0) * work / 2)) if gpu_scale > 1 else 0
                cs = time.perf_counter_ns()
                ev = layer.run(extra, context_len)
                if self.flush_each_kernel:
                    q.flush()
                host.append((cs, _stretch(cs, cpu_scale)))
                events.append(ev)
                previous = layer.out
                last_event = ev
            else:
                _drain(q, last_event)
                last_event = None
                cs = time.perf_counter_ns()
                arr = None
                arr = self._read(previous) if isinstance(previous, cl.Buffer) else previous
                previous = self._host_op(spec_layer, layer, arr)
                host.append((cs, _stretch(cs, cpu_scale)))
                events.append(None)
        _drain(q, last_event)
        out = self._read(previous, limit=4096) if isinstance(previous, cl.Buffer) else previous
        t_end = time.perf_counter_ns()
        return self._timings(t_start, t_end, host, events, out if keep_output else None)

    def _timings(self, t0: int, t_end: int, host, events, out) -> RunTiming:
        layers = []
        clamped = 0
        device_free = 0
        for spec_layer, (cs, ce), ev in zip(self.spec.flat_layers(), host, events, strict=True):
            cpu_start, cpu_end = cs - t0, ce - t0
            if ev is None:
                if cpu_start < device_free:  # alignment error: the device had drained by then
                    bound = cpu_start  # every earlier kernel ended before this; pull them back in
                    for prev in reversed(layers):
                        if prev.kind != "gpu" or prev.gpu_end_ns <= bound:
                            break
                        clamped += 1
                        prev.gpu_end_ns = bound
                        prev.gpu_start_ns = max(min(prev.gpu_start_ns, bound), prev.cpu_start_ns)
                        bound = prev.gpu_start_ns
                    device_free = cpu_start
                layers.append(LayerTiming(spec_layer.name, "cpu", cpu_start, cpu_end))
                continue
            g0 = ev.profile.start - self.offset_ns - t0
            g1 = ev.profile.end - self.offset_ns - t0
            fixed0 = max(g0, cpu_start, device_free)
            if fixed0 != g0:
                clamped += 1
            g1 = max(g1, fixed0)
            layers.append(LayerTiming(spec_layer.name, "gpu", cpu_start, cpu_end, int(fixed0), int(g1)))
            device_free = int(g1)
        latency = max(t_end - t0, max(max(x.cpu_end_ns, x.gpu_end_ns or 0) for x in layers))
        return RunTiming(latency_ns=int(latency), layers=layers, clamped=clamped, output=out)
