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
# The emulated memory clock reads from a ring this large (a power of two): well beyond the
# last-level cache of the devices we profile on (tens of MiB on GPUs and server CPUs), so its
# reads go to memory; a smaller one is used only where the device has little memory.
SINK_BYTES = 256 * 2**20


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
    bytes: float = 0.0  # the bytes the layer must move (inputs, weights, output), for memory emulation
    bytes_per_token: float = 0.0  # attention: the KV cache read grows with the context


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


def _nbytes(*arrays) -> float:
    """fp32 bytes of the given host arrays and shapes: what a layer must read and write."""
    return 4.0 * sum(a.size if isinstance(a, np.ndarray) else int(np.prod(a)) for a in arrays)


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
        self._stub = cl.Buffer(self.ctx, MF.READ_ONLY, 4)
        self._sink: cl.Buffer | None = None  # emulated memory clock: allocated on first use
        self._sink_floats = 0
        self._sink_off = 0
        self._host_sink: np.ndarray | None = None
        self._host_off = 0
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

    def _ring(self, float4s: int = 0) -> None:
        """Allocate the device ring the emulated memory clock reads (see kernels.py), written once
        so that its pages are committed before anything is timed. It holds at least twice what one
        launch reads, so no launch wraps onto lines it has just read (they would hit in cache)."""
        size = SINK_BYTES
        while size < 32 * float4s:
            size *= 2
        size = min(size, max(2**20, 1 << (self.device.global_mem_size // 4).bit_length() - 1))
        if self._sink is not None and size <= self._sink_floats * 4:
            return
        # non-zero contents: a device may compress or short-cut runs of zeros
        ramp = (np.arange(size // 4, dtype=np.uint32) % 65521).astype(np.float32)
        self._sink = cl.Buffer(self.ctx, MF.READ_ONLY | MF.COPY_HOST_PTR, hostbuf=ramp)
        self._sink_floats = size // 4
        self._sink_off = 0

    def _launcher(self, name: str, gsize: tuple[int, ...], *args, ctx_arg: int | None = None):
        """A kernel with its arguments bound once (as runtimes do); the call sets only ``extra``,
        the emulated memory traffic (``mem_total`` floats from ``mem_off``) and, for attention, the
        context length, then enqueues it."""
        kernel = cl.Kernel(self.prg, name)
        # until a memory clock is emulated, a 4-byte stand-in (never read: mem_total is 0)
        sink = self._sink if self._sink is not None else self._stub
        kernel.set_args(*args, np.int32(0), sink, np.uint32(max(self._sink_floats // 4, 1) - 1), np.uint32(0),
                        np.uint32(0))
        last = len(args)
        q = self.queue
        bound = [sink]

        def run(extra: int, ctx: int | None, mem_total: int = 0, mem_off: int = 0, _keep=args):
            # _keep: buffers must outlive the kernel
            kernel.set_arg(last, np.int32(extra))
            if mem_total and bound[0] is not self._sink:  # the real ring replaced the stand-in
                bound[0] = self._sink
                kernel.set_arg(last + 1, self._sink)
                kernel.set_arg(last + 2, np.uint32(self._sink_floats // 4 - 1))
            kernel.set_arg(last + 3, np.uint32(mem_total))
            kernel.set_arg(last + 4, np.uint32(mem_off))
            if ctx_arg is not None:
                kernel.set_arg(ctx_arg, np.int32(ctx))
            return cl.enqueue_nd_range_kernel(q, kernel, gsize, None)
        return run

    def _mem_traffic(self, float4s: int) -> int:
        """Claim ``float4s`` (16 bytes each) of the device ring for one launch; returns where its reads start. The
        offset moves on by what each launch reads, so a launch never finds the previous ones'
        lines in cache (the ring is larger than the caches)."""
        self._ring(float4s)
        off = self._sink_off
        self._sink_off = (off + float4s) % (self._sink_floats // 4)
        return off

    def _host_traffic(self, nbytes: float) -> None:
        """Host side of an emulated memory clock: read ``nbytes`` more of a ring in host memory
        (larger than the caches), as a host operator moving k times its bytes would."""
        if nbytes < 4:
            return
        if self._host_sink is None:
            self._host_sink = np.zeros(SINK_BYTES // 4 // 2, np.float32)  # 128 MiB, written: committed
        ring, n = self._host_sink, int(nbytes // 4)
        while n > 0:
            take = min(n, ring.size - self._host_off)
            float(np.add.reduce(ring[self._host_off:self._host_off + take]))
            self._host_off = (self._host_off + take) % ring.size
            n -= take

    def _build(self, layer) -> _Layer:
        i32, L = np.int32, self._launcher
        match layer:
            case Conv(h=h, w=w, cin=ci, cout=co, k=k, stride=s):
                x, xh = self._buf((ci, h * s, w * s))
                wt, wh = self._buf((co, ci, k, k))
                y, _ = self._buf((co, h, w), data=False)
                run = L("conv", (w, h, co), x, wt, y, i32(ci), i32(h * s), i32(w * s), i32(co), i32(h), i32(w),
                        i32(k), i32(s))
                return _Layer(layer.name, True, run, 2.0 * ci * k * k, y, (xh, wh), bytes=_nbytes(xh, wh, (co, h, w)))
            case DepthwiseConv(h=h, w=w, c=c, k=k, stride=s):
                x, xh = self._buf((c, h * s, w * s))
                wt, wh = self._buf((c, k, k))
                y, _ = self._buf((c, h, w), data=False)
                run = L("dwconv", (w, h, c), x, wt, y, i32(c), i32(h * s), i32(w * s), i32(h), i32(w), i32(k),
                        i32(s))
                return _Layer(layer.name, True, run, 2.0 * k * k, y, (xh, wh), bytes=_nbytes(xh, wh, (c, h, w)))
            case Gemm(m=m, n=n, k=kk):
                a, ah = self._buf((m, kk))
                b, bh = self._buf((kk, n))
                y, _ = self._buf((m, n), data=False)
                run = L("gemm", (n, m), a, b, y, i32(m), i32(n), i32(kk))
                return _Layer(layer.name, True, run, 2.0 * kk, y, (ah, bh), bytes=_nbytes(ah, bh, (m, n)))
            case Elementwise(n=n, inputs=inputs):
                a, ah = self._buf((n,))
                y, _ = self._buf((n,), data=False)
                if inputs >= 2:
                    b, bh = self._buf((n,))
                    run = L("add2", (n,), a, b, y, i32(n))
                    return _Layer(layer.name, True, run, 4.0, y, (ah, bh), bytes=_nbytes(ah, bh, (n,)))
                run = L("silu", (n,), a, y, i32(n))
                return _Layer(layer.name, True, run, 4.0, y, (ah,), bytes=_nbytes(ah, (n,)))
            case Pool(h=h, w=w, c=c, k=k, stride=s):
                x, xh = self._buf((c, h * s, w * s))
                y, _ = self._buf((c, h, w), data=False)
                run = L("maxpool", (w, h, c), x, y, i32(c), i32(h * s), i32(w * s), i32(h), i32(w), i32(k), i32(s))
                return _Layer(layer.name, True, run, float(k * k), y, (xh,), bytes=_nbytes(xh, (c, h, w)))
            case Softmax(rows=r, cols=cols):
                x, xh = self._buf((r, cols))
                y, _ = self._buf((r, cols), data=False)
                run = L("softmax_rows", (r,), x, y, i32(r), i32(cols))
                return _Layer(layer.name, True, run, 5.0 * cols, y, (xh,), bytes=_nbytes(xh, (r, cols)))
            case Norm(rows=r, n=n):
                x, xh = self._buf((r, n))
                g, gh = self._buf((n,))
                y, _ = self._buf((r, n), data=False)
                run = L("rmsnorm", (r,), x, g, y, i32(r), i32(n))
                return _Layer(layer.name, True, run, 4.0 * n, y, (xh, gh), bytes=_nbytes(xh, gh, (r, n)))
            case Attention(heads=hh, kv_heads=kv, head_dim=d):
                cmax = max(self.max_context, 1)
                qb, qh = self._buf((hh, d))
                kc, kh = self._buf((cmax, kv, d))
                vc, vh = self._buf((cmax, kv, d))
                y, _ = self._buf((hh, d), data=False)

                launch = L("attention", (hh,), qb, kc, vc, y, i32(hh), i32(kv), i32(d), i32(1), ctx_arg=7)

                def run(extra, ctx, mem_total=0, mem_off=0, launch=launch, cmax=cmax):
                    if ctx is None or ctx > cmax or ctx < 1:
                        raise ValueError(f"context_len {ctx} outside 1..{cmax} (the KV cache size)")
                    return launch(extra, ctx, mem_total, mem_off)
                return _Layer(layer.name, True, run, 0.0, y, (qh, kh, vh), flops_per_token=4.0 * d,
                              bytes=_nbytes(qh, (hh, d)), bytes_per_token=2.0 * kv * d * 4)
            case HostOp(kind="nms", n=n):  # fixed boxes: every run does the same work
                centre = self.rng.random((n, 2)) * 400
                size = 10 + self.rng.random((n, 2)) * 60
                boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
                return _Layer(layer.name, False, None, inputs=(boxes,), bytes=8.0 * n)
            case HostOp(n=n):
                return _Layer(layer.name, False, None, inputs=(self.rng.standard_normal(n).astype(np.float32),),
                              bytes=8.0 * n)
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
            keep_output: bool = False, mem_scale: float = 1.0, per_layer: bool = True) -> RunTiming:
        """One inference. ``cpu_scale``/``gpu_scale``/``mem_scale`` >= 1 emulate a CPU/GPU/memory
        clock at f/scale (see the module docs of benchmarks/opencl_validation.py and kernels.py);
        1 means as the hardware is. ``per_layer=False`` times the whole inference only, as a timer
        around a runtime's inference call does: no clock alignment, no per-layer intervals
        (``layers`` is empty), ``latency_ns`` from the call until the result is on the host."""
        q = self.queue
        q.finish()
        if per_layer:  # the device clock drifts against the host's: re-anchor before every inference
            self.offset_ns, self.offset_uncertainty_ns = self.calibrate(samples=5)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection in the middle would show up as a slow layer
        try:
            return self._run(context_len, cpu_scale, gpu_scale, keep_output, mem_scale, per_layer)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, context_len: int | None, cpu_scale: float, gpu_scale: float, keep_output: bool,
             mem_scale: float, per_layer: bool) -> RunTiming:
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
                moved = layer.bytes + layer.bytes_per_token * (context_len or 0)
                mem_total = int(round((mem_scale - 1.0) * moved / 16)) if mem_scale > 1 else 0
                mem_off = self._mem_traffic(mem_total) if mem_total else 0
                cs = time.perf_counter_ns()
                ev = layer.run(extra, context_len, mem_total, mem_off)
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
                ce = _stretch(cs, cpu_scale)
                if mem_scale > 1:  # memory traffic does not scale with the CPU clock: after the stretch
                    self._host_traffic((mem_scale - 1.0) * layer.bytes)
                    ce = time.perf_counter_ns()
                host.append((cs, ce))
                events.append(None)
        _drain(q, last_event)
        out = self._read(previous, limit=4096) if isinstance(previous, cl.Buffer) else previous
        t_end = time.perf_counter_ns()
        if not per_layer:
            return RunTiming(latency_ns=t_end - t_start, layers=[], output=out if keep_output else None)
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
