"""Bring your own model: an ONNX graph into our model description (``dvfs_schema.workload.ModelSpec``).

The graph is read with the ``onnx`` package and its shape inference, so every layer gets the real
shapes the runtime would see. Each node becomes the layer kind whose arithmetic and memory traffic
match it (conv, depthwise conv, GEMM/MatMul, elementwise, pooling, softmax, norm, attention);
nodes that only reinterpret a tensor (Reshape, Flatten, Squeeze, Shape, ...) run no kernel and are
dropped; nodes the GPU path has no kernel for become host fallbacks, as inference runtimes fall
back to the CPU for them (NMS, TopK, Resize, control flow, ...), which makes the device drain first.

``onnx`` is an optional extra (``pip install 'deadline-dvfs[onnx]'``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

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

INSTALL_HINT = "pip install 'deadline-dvfs[onnx]'"

CONVS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv"}
GEMMS = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "FusedGemm", "MatMulNBits"}
ELEMENTWISE = {
    "Abs", "Add", "And", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Cos", "Div", "Elu", "Equal", "Erf",
    "Exp", "Floor", "Gelu", "Greater", "HardSigmoid", "HardSwish", "LeakyRelu", "Less", "Log", "Max", "Mean",
    "Min", "Mish", "Mod", "Mul", "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "Round", "Selu",
    "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tanh", "ThresholdedRelu", "Where",
    "Xor", "QuickGelu", "FastGelu", "BiasGelu", "QuantizeLinear", "DequantizeLinear", "QLinearAdd", "QLinearMul",
    "QLinearSigmoid", "QLinearLeakyRelu", "DynamicQuantizeLinear",
}
# data movement the runtimes run as copy kernels: one read and one write of the output's size
COPIES = {"Transpose", "Concat", "Slice", "Split", "Pad", "Tile", "Expand", "Gather", "DepthToSpace",
          "SpaceToDepth"}
# no kernel at all: metadata or views
VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Dropout", "Size",
         "ConstantOfShape"}
NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "SkipLayerNormalization",
         "InstanceNormalization", "GroupNormalization", "LpNormalization", "MeanVarianceNormalization"}
ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention"}
POOLS = {"MaxPool", "AveragePool", "LpPool"}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool"}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd"}
# host fallbacks with a host algorithm of their own; any other unsupported op is a "decode"-like pass
HOST_KINDS = {"NonMaxSuppression": "nms", "TopK": "sample", "Resize": "resize", "Upsample": "resize"}
DTYPE_BYTES = {1: 4, 10: 2, 16: 2, 2: 1, 3: 1, 6: 4, 7: 4, 11: 4}  # onnx TensorProto elem types


class OnnxModelError(ValueError):
    """An ONNX file that cannot become a model description; the message names file and node."""


@dataclass(frozen=True)
class LayerOrigin:
    """Which ONNX node a layer came from, for `dvfs-gov models describe`."""

    layer: str
    node: str
    op_type: str
    note: str = ""


@dataclass(frozen=True)
class ImportedModel:
    spec: ModelSpec
    origins: list[LayerOrigin]
    dropped: list[LayerOrigin]  # nodes that run no kernel (views, shapes)


def _require_onnx():
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        raise OnnxModelError(f"reading ONNX models needs the onnx package: {INSTALL_HINT}") from None
    return onnx, shape_inference


def _prod(dims) -> int:
    return int(math.prod(dims)) if dims else 1


def _safe_name(text: str, fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.:-]+", "_", text).strip("_")
    return name or fallback


def load_onnx(path: str | Path, name: str | None = None) -> ImportedModel:
    """Read ``path`` into a ModelSpec; refuses with a message naming the node it could not shape."""
    onnx, shape_inference = _require_onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise OnnxModelError(f"{path}: no such file") from None
    except Exception as exc:  # protobuf decode errors have no common public base class
        raise OnnxModelError(f"{path}: not an ONNX model: {exc}") from None
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise OnnxModelError(f"{path}: ONNX shape inference failed: {exc}") from None
    g = model.graph
    shapes: dict[str, list[int]] = {}
    elem: dict[str, int] = {}
    symbolic: set[str] = set()
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:  # symbolic (batch, sequence): profiled at 1
                dims.append(1)
                if vi in g.input:
                    symbolic.add(d.dim_param or "?")
        shapes[vi.name] = dims
        elem[vi.name] = t.elem_type
    initializers = {i.name: list(i.dims) for i in g.initializer}
    for name_, dims in initializers.items():
        shapes.setdefault(name_, [int(x) for x in dims])
    graph_inputs = [i for i in g.input if i.name not in initializers]
    dtype_bytes = DTYPE_BYTES.get(elem.get(graph_inputs[0].name, 1), 4) if graph_inputs else 4
    if dtype_bytes not in (1, 2, 4):
        dtype_bytes = 4

    layers = []
    origins: list[LayerOrigin] = []
    dropped: list[LayerOrigin] = []
    used: set[str] = set()
    for i, node in enumerate(g.node):
        op = node.op_type
        base = _safe_name(node.name, f"{op.lower()}_{i}")
        lname = base if base not in used else f"{base}_{i}"
        where = f"{path}, node {node.name or i!r} ({op})"
        out_shape = shapes.get(node.output[0]) if node.output else None
        in_shapes = [shapes.get(x) for x in node.input if x]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op in VIEWS:
            dropped.append(LayerOrigin(lname, node.name, op, "no kernel (view or metadata)"))
            continue
        if out_shape is None and op not in HOST_KINDS:
            raise OnnxModelError(f"{where}: shape inference gave no shape for output {node.output[0]!r}; "
                                 "export the model with static input shapes")
        note = ""
        try:
            layer = _layer(op, lname, attrs, in_shapes, out_shape, node, initializers)
        except (ValueError, IndexError, ZeroDivisionError) as exc:
            raise OnnxModelError(f"{where}: cannot describe it: {exc}") from None
        if isinstance(layer, HostOp):
            note = f"host fallback ({layer.kind}): no GPU kernel for {op}"
        used.add(lname)
        layers.append(layer)
        origins.append(LayerOrigin(lname, node.name, op, note))
    if not layers:
        raise OnnxModelError(f"{path}: no node runs a kernel")
    has_nms = any(isinstance(x, HostOp) and x.kind == "nms" for x in layers)
    has_attention = any(isinstance(x, Attention) for x in layers)
    out_bytes = sum(_prod(shapes.get(o.name, [1])) for o in g.output) * dtype_bytes
    description = f"imported from {path.name}"
    if symbolic:
        description += f" (symbolic dims {', '.join(sorted(symbolic))} taken as 1)"
    try:
        spec = ModelSpec(
            name=name or _safe_name(path.stem, "onnx_model"),
            description=description,
            kind="language_model" if has_attention else ("detector" if has_nms else "cnn"),
            dtype_bytes=dtype_bytes,
            output_bytes=max(4, out_bytes),
            profile_context_len=[64, 256] if has_attention else [],
            layers=layers,
        )
    except ValueError as exc:
        raise OnnxModelError(f"{path}: {exc}") from None
    return ImportedModel(spec, origins, dropped)


def _nchw(shape: list[int]) -> tuple[int, int, int]:
    """(c, h, w) with the batch folded into h: a batch of N images is N times the rows."""
    if len(shape) == 4:
        n, c, h, w = shape
        return c, n * h, w
    if len(shape) == 3:
        n, c, length = shape
        return c, n, length
    raise ValueError(f"expected an NCHW tensor, got shape {shape}")


def _layer(op, name, attrs, in_shapes, out_shape, node, initializers):
    if op in CONVS:
        c_out, h, w = _nchw(out_shape)
        c_in = _nchw(in_shapes[0])[0]
        weight = 3 if op == "QLinearConv" else 1  # quantized: (x, scale, zero point, w, ...)
        kernel = attrs.get("kernel_shape") or (in_shapes[weight][2:] if len(in_shapes) > weight else [1])
        k = max(1, round(math.sqrt(_prod(kernel))))
        stride = max(1, int((attrs.get("strides") or [1])[0]))
        group = int(attrs.get("group", 1))
        if group > 1 and group == c_in == c_out:
            return DepthwiseConv(name=name, op="dwconv", h=h, w=w, c=c_out, k=k, stride=stride)
        return Conv(name=name, op="conv", h=h, w=w, cin=max(1, c_in // group), cout=c_out, k=k, stride=stride)
    if op in GEMMS:
        a = in_shapes[0]
        k = a[-2] if op == "Gemm" and attrs.get("transA", 0) else a[-1]
        n = out_shape[-1]
        m = _prod(out_shape[:-1])
        return Gemm(name=name, op="gemm", m=max(1, m), n=max(1, n), k=max(1, k))
    if op in ELEMENTWISE or op in COPIES or op in REDUCES:
        n = _prod(in_shapes[0]) if op in REDUCES else _prod(out_shape)
        tensors = sum(1 for x in node.input if x and x not in initializers) if op not in COPIES else 1
        return Elementwise(name=name, op="elementwise", n=max(1, n), inputs=max(1, tensors))
    if op in POOLS:
        c, h, w = _nchw(out_shape)
        k = max(1, round(math.sqrt(_prod(attrs.get("kernel_shape") or [2]))))
        stride = max(1, int((attrs.get("strides") or [1])[0]))
        return Pool(name=name, op="pool", h=h, w=w, c=c, k=k, stride=stride)
    if op in GLOBAL_POOLS:
        c, h_in, w_in = _nchw(in_shapes[0])
        return Pool(name=name, op="pool", h=1, w=1, c=c, k=max(h_in, w_in), stride=max(h_in, w_in))
    if op in ("Softmax", "LogSoftmax"):
        axis = int(attrs.get("axis", -1)) % len(out_shape)
        cols = _prod(out_shape[axis:])
        return Softmax(name=name, op="softmax", rows=max(1, _prod(out_shape) // cols), cols=cols)
    if op in NORMS:
        axis = int(attrs.get("axis", -1)) % len(out_shape)
        if op in ("InstanceNormalization", "GroupNormalization"):
            axis = 2
        n = _prod(out_shape[axis:])
        return Norm(name=name, op="norm", rows=max(1, _prod(out_shape) // n), n=n)
    if op in ATTENTION:
        heads = int(attrs.get("num_heads") or attrs.get("q_num_heads") or 1)
        kv = int(attrs.get("kv_num_heads") or heads)
        hidden = out_shape[-1]
        return Attention(name=name, op="attention", heads=heads, kv_heads=kv, head_dim=max(1, hidden // heads))
    # no GPU kernel: a host fallback
    kind = HOST_KINDS.get(op, "decode")
    if kind == "nms":
        n = in_shapes[0][1] if in_shapes and in_shapes[0] and len(in_shapes[0]) >= 2 else 1000
    elif kind == "sample":
        n = _prod(in_shapes[0]) if in_shapes and in_shapes[0] else 1
        if n <= 40:  # the host top-k keeps 40 candidates: fewer values is a plain pass over them
            kind = "decode"
    else:
        n = _prod(out_shape) if out_shape else (_prod(in_shapes[0]) if in_shapes and in_shapes[0] else 1)
    return HostOp(name=name, op="host", kind=kind, n=max(1, n))


def describe(imported: ImportedModel) -> list[dict]:
    """One row per layer: name, our op and its shape fields, the ONNX node and op it came from."""
    rows = []
    for layer, origin in zip(imported.spec.flat_layers(), imported.origins, strict=True):
        fields = layer.model_dump(exclude={"name", "op"})
        rows.append({"layer": layer.name, "op": layer.op, **fields, "onnx_node": origin.node,
                     "onnx_op": origin.op_type, "note": origin.note})
    return rows
