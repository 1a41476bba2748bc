"""Small ONNX models built with onnx.helper for the tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _init(name: str, shape: tuple[int, ...], seed: int):
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def tiny_cnn(path: Path) -> Path:
    """Conv 3->8 (3x3) + Relu + MaxPool 2x2 + depthwise Conv 3x3 + GlobalAveragePool + Flatten + Gemm
    8->40 + Softmax + TopK(5) over the 40 scores (no GPU kernel: a host fallback)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="dw2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         group=8),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        helper.make_node("TopK", ["probs", "k"], ["top_values", "top_indices"], name="topk", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("top_values", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("top_indices", TensorProto.INT64, [1, 5])],
        [_init("w1", (8, 3, 3, 3), 1), _init("b1", (8,), 2), _init("w2", (8, 1, 3, 3), 3),
         _init("w3", (40, 8), 4), _init("b3", (40,), 5),
         helper.make_tensor("k", TensorProto.INT64, [1], [5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_transformer(path: Path, seq: int = 8, hidden: int = 16) -> Path:
    """One single-head transformer block: LayerNormalization, Q/K/V MatMuls, Q.K^T, Softmax, .V,
    output MatMul and the residual Add; sequence length symbolic ("seq")."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["h"], name="ln", axis=-1),
        helper.make_node("MatMul", ["h", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["h", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["h", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["attn"], name="attn_softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"], name="av"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["x", "o"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_transformer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])],
        [_init("ln_g", (hidden,), 6), _init("ln_b", (hidden,), 7), _init("wq", (hidden, hidden), 8),
         _init("wk", (hidden, hidden), 9), _init("wv", (hidden, hidden), 10), _init("wo", (hidden, hidden), 11)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def detector_with_nms(path: Path, boxes: int = 64) -> Path:
    """Conv + Sigmoid scores, then NonMaxSuppression over ``boxes`` boxes: a host fallback."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["feat"], name="head", kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["feat"], ["act"], name="act"),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["keep"], name="nms"),
    ]
    graph = helper.make_graph(
        nodes, "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, boxes, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, boxes])],
        [helper.make_tensor_value_info("keep", TensorProto.INT64, [None, 3]),
         helper.make_tensor_value_info("act", TensorProto.FLOAT, [1, 4, 8, 8])],
        [_init("w", (4, 4, 1, 1), 12), helper.make_tensor("max_out", TensorProto.INT64, [1], [10]),
         helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def quantized_conv(path: Path) -> Path:
    """QuantizeLinear + QLinearConv (uint8, 3x3, 4 -> 8 channels, stride 2) + DequantizeLinear."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(13).integers(0, 255, (8, 4, 3, 3), dtype=np.uint8)
    inits = [helper.make_tensor("w", TensorProto.UINT8, list(w.shape), w.tobytes(), raw=True)]
    for scale, value in (("s", 0.02), ("ws", 0.01), ("ys", 0.05)):
        inits.append(helper.make_tensor(scale, TensorProto.FLOAT, [], [value]))
    for zero in ("zp", "wzp", "yzp"):
        inits.append(helper.make_tensor(zero, TensorProto.UINT8, [], [128]))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="quant"),
        helper.make_node("QLinearConv", ["xq", "s", "zp", "w", "ws", "wzp", "ys", "yzp"], ["yq"], name="qconv",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yzp"], ["y"], name="dequant"),
    ]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ort_profile(model: Path, prefix: Path, runs: int = 4) -> str:
    """Run ``model`` ``runs`` times under ONNX Runtime's profiler on the CPU (graph optimisations
    off, so the graph's own nodes show) and return the profile file, written next to ``prefix``."""
    import pytest

    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the graph's nodes
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {"x": x})
    return sess.end_profiling()
