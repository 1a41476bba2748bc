"""Model descriptions (``configs/models/*.yaml``): layers with real shapes, and the work they imply.

One description serves the OpenCL profiler (which builds kernels of these shapes) and the virtual
board's simulator (which turns shapes into arithmetic and memory traffic), so both run the same
model. Shapes are per layer; ``repeat`` blocks keep a 200-layer network readable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class Conv(_Op):
    """Dense 2-D convolution; h, w are the output size."""

    op: Literal["conv"]
    h: PositiveInt
    w: PositiveInt
    cin: PositiveInt
    cout: PositiveInt
    k: PositiveInt = 3
    stride: PositiveInt = 1


class DepthwiseConv(_Op):
    op: Literal["dwconv"]
    h: PositiveInt
    w: PositiveInt
    c: PositiveInt
    k: PositiveInt = 3
    stride: PositiveInt = 1


class Gemm(_Op):
    """(m x k) @ (k x n): a linear layer with m tokens."""

    op: Literal["gemm"]
    m: PositiveInt
    n: PositiveInt
    k: PositiveInt


class Elementwise(_Op):
    """n outputs from ``inputs`` same-sized inputs (add, mul, activation, RoPE, ...)."""

    op: Literal["elementwise"]
    n: PositiveInt
    inputs: PositiveInt = 2


class Pool(_Op):
    op: Literal["pool"]
    h: PositiveInt
    w: PositiveInt
    c: PositiveInt
    k: PositiveInt = 2
    stride: PositiveInt = 2


class Softmax(_Op):
    op: Literal["softmax"]
    rows: PositiveInt
    cols: PositiveInt


class Norm(_Op):
    """RMS/layer norm over ``rows`` vectors of ``n`` elements."""

    op: Literal["norm"]
    rows: PositiveInt = 1
    n: PositiveInt


class Attention(_Op):
    """One decode step's attention over a KV cache of ``context_len`` tokens."""

    op: Literal["attention"]
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt


class HostOp(_Op):
    """An operator the accelerator does not run: it executes on the host after the device drains.

    ``kind`` picks the host algorithm: ``nms`` over ``n`` boxes, ``decode`` of ``n`` values,
    ``resize``/``concat`` of ``n`` values, ``sample`` (top-k) over a vocabulary of ``n``.
    """

    op: Literal["host"]
    kind: Literal["nms", "decode", "resize", "concat", "sample"]
    n: PositiveInt


GpuOp = Conv | DepthwiseConv | Gemm | Elementwise | Pool | Softmax | Norm | Attention
LayerSpec = Annotated[GpuOp | HostOp, Field(discriminator="op")]


class Repeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repeat: PositiveInt
    layers: list[LayerSpec | Repeat]


class ModelSpec(BaseModel):
    """A model: its layers in program order. ``dtype_bytes`` is 2 for fp16, 4 for fp32."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["cnn", "detector", "language_model"]
    dtype_bytes: Literal[1, 2, 4] = 2
    output_bytes: PositiveInt = 4096
    profile_context_len: list[int] = []
    layers: list[LayerSpec | Repeat]

    def flat_layers(self) -> list[GpuOp | HostOp]:
        """Layers in program order with repeats unrolled; repeated names get a ``.N`` suffix."""
        out: list[GpuOp | HostOp] = []

        def walk(items: list[Any], suffix: str) -> None:
            for item in items:
                if isinstance(item, Repeat):
                    for r in range(item.repeat):
                        walk(item.layers, f"{suffix}.{r}")
                else:
                    out.append(item.model_copy(update={"name": item.name + suffix}))

        walk(self.layers, "")
        return out


@dataclass(frozen=True)
class Work:
    """What a layer costs, independent of any device.

    GPU layers: floating-point operations and DRAM bytes (each ``+ per_token * context_len``).
    Host layers: ``flops`` counts host operations and ``bytes`` host memory traffic.
    """

    on_gpu: bool
    flops: float
    bytes: float
    flops_per_token: float = 0.0
    bytes_per_token: float = 0.0


def layer_work(layer: GpuOp | HostOp, dt: int) -> Work:
    match layer:
        case Conv(h=h, w=w, cin=ci, cout=co, k=k, stride=s):
            return Work(True, 2.0 * h * w * co * ci * k * k,
                        dt * (h * w * ci * s * s + h * w * co + k * k * ci * co))
        case DepthwiseConv(h=h, w=w, c=c, k=k, stride=s):
            return Work(True, 2.0 * h * w * c * k * k, dt * (h * w * c * s * s + h * w * c + k * k * c))
        case Gemm(m=m, n=n, k=k):
            return Work(True, 2.0 * m * n * k, dt * (m * k + k * n + m * n))
        case Elementwise(n=n, inputs=i):
            return Work(True, float(n * i), float(dt * n * (i + 1)))
        case Pool(h=h, w=w, c=c, k=k, stride=s):
            return Work(True, float(h * w * c * k * k), float(dt * (h * w * c * s * s + h * w * c)))
        case Softmax(rows=r, cols=c):
            return Work(True, 5.0 * r * c, float(dt * 2 * r * c))
        case Norm(rows=r, n=n):
            return Work(True, 4.0 * r * n, float(dt * 2 * r * n))
        case Attention(heads=h, kv_heads=kv, head_dim=d):
            # q.K^T and softmax(.)V over the cache: 4*h*d flops per cached token; the cache
            # (K and V, kv heads) is read once per step.
            return Work(True, 4.0 * h * d, float(dt * 4 * h * d),
                        flops_per_token=4.0 * h * d + 5.0 * h, bytes_per_token=float(2 * kv * d * dt))
        case HostOp(kind=kind, n=n):
            ops = {
                "nms": 30.0 * n * max(math.log2(n), 1.0),
                "decode": 12.0 * n,
                "resize": 6.0 * n,
                "concat": 1.0 * n,
                "sample": 4.0 * n,
            }[kind]
            return Work(False, ops, float(4 * n * 2))
    raise TypeError(f"unknown layer {layer!r}")
