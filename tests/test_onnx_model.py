"""Bringing an ONNX model: graph -> model description, `models describe`, profiling it for real on
OpenCL (PoCL here), fitting it; and importing ONNX Runtime's own profiling output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx_builders import detector_with_nms, ort_profile, quantized_conv, tiny_cnn, tiny_transformer  # noqa: E402

from dvfs_schema.loading import ConfigError, load_model_spec  # noqa: E402
from dvfs_schema.onnx_model import OnnxModelError, load_onnx  # noqa: E402
from dvfs_schema.workload import layer_work  # noqa: E402
from estimator.model import Estimator  # noqa: E402
from estimator.profile import parse_profile  # noqa: E402
from governor.profiler.ort_import import runs_from_ort  # noqa: E402
from governor.profiler.trace_import import TraceError  # noqa: E402

CLI = [sys.executable, "-m", "governor.cli"]


def run_cli(*args, **kw):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_tiny_cnn_becomes_our_layers_with_real_shapes(tmp_path):
    imported = load_onnx(tiny_cnn(tmp_path / "cnn.onnx"))
    spec = imported.spec
    layers = {x.name: x for x in spec.flat_layers()}
    assert [x.op for x in spec.flat_layers()] == ["conv", "elementwise", "pool", "dwconv", "pool", "gemm",
                                                    "softmax", "host"]
    conv = layers["conv1"]
    assert (conv.h, conv.w, conv.cin, conv.cout, conv.k, conv.stride) == (16, 16, 3, 8, 3, 1)
    assert (layers["pool1"].h, layers["pool1"].c, layers["pool1"].k, layers["pool1"].stride) == (8, 8, 2, 2)
    dw = layers["dw2"]
    assert (dw.op, dw.h, dw.w, dw.c, dw.k) == ("dwconv", 8, 8, 8, 3)
    assert (layers["gap"].h, layers["gap"].k) == (1, 8)
    assert (layers["fc"].m, layers["fc"].n, layers["fc"].k) == (1, 40, 8)
    assert (layers["softmax"].rows, layers["softmax"].cols) == (1, 40)
    assert layers["relu1"].n == 8 * 16 * 16
    # TopK has no GPU kernel: a host fallback, as runtimes fall back to the CPU
    assert layers["topk"].op == "host" and layers["topk"].n == 40
    assert [d.op_type for d in imported.dropped] == ["Flatten"]
    # the conv's arithmetic is the real one: 2 * H * W * Cout * Cin * k * k
    assert layer_work(conv, spec.dtype_bytes).flops == 2 * 16 * 16 * 8 * 3 * 9
    assert spec.dtype_bytes == 4 and spec.kind == "cnn"


def test_tiny_transformer_block(tmp_path):
    spec = load_onnx(tiny_transformer(tmp_path / "tf.onnx")).spec
    layers = {x.name: x for x in spec.flat_layers()}
    assert (layers["ln"].op, layers["ln"].rows, layers["ln"].n) == ("norm", 8, 16)
    assert (layers["q_proj"].m, layers["q_proj"].n, layers["q_proj"].k) == (8, 16, 16)
    assert (layers["qk"].m, layers["qk"].n, layers["qk"].k) == (8, 8, 16)  # Q.K^T: seq x seq
    assert (layers["av"].m, layers["av"].n, layers["av"].k) == (8, 16, 8)
    assert (layers["attn_softmax"].rows, layers["attn_softmax"].cols) == (8, 8)
    assert (layers["residual"].op, layers["residual"].inputs, layers["residual"].n) == ("elementwise", 2, 128)
    assert not any(x.op == "host" for x in spec.flat_layers())


def test_nms_becomes_a_host_fallback_and_detector(tmp_path):
    spec = load_onnx(detector_with_nms(tmp_path / "det.onnx", boxes=64)).spec
    nms = spec.flat_layers()[-1]
    assert (nms.op, nms.kind, nms.n) == ("host", "nms", 64)
    assert spec.kind == "detector"


def test_quantized_conv_is_a_conv_not_a_fallback(tmp_path):
    spec = load_onnx(quantized_conv(tmp_path / "q.onnx")).spec
    quant, conv, dequant = spec.flat_layers()
    assert (quant.op, quant.inputs, quant.n) == ("elementwise", 1, 4 * 16 * 16)  # scale/zero point are constants
    assert (conv.op, conv.h, conv.w, conv.cin, conv.cout, conv.k, conv.stride) == ("conv", 8, 8, 4, 8, 3, 2)
    assert dequant.op == "elementwise"


def test_bad_files_get_one_line_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(OnnxModelError, match="bad.onnx: not an ONNX model"):
        load_onnx(bad)
    with pytest.raises(ConfigError, match="missing.onnx: no such file"):
        load_model_spec(tmp_path / "missing.onnx")
    out = run_cli("models", "describe", bad)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_models_describe_cli(tmp_path):
    path = tiny_cnn(tmp_path / "cnn.onnx")
    out = run_cli("models", "describe", path)
    assert out.returncode == 0, out.stderr
    assert "8 layers (7 on the GPU, 1 host fallbacks)" in out.stdout
    assert "host fallback" in out.stdout and "TopK" in out.stdout
    js = json.loads(run_cli("models", "describe", path, "--json").stdout)
    assert [r["onnx_op"] for r in js["layers"]] == ["Conv", "Relu", "MaxPool", "Conv", "GlobalAveragePool", "Gemm",
                                                    "Softmax", "TopK"]
    assert js["dropped"] == ["flatten (Flatten)"]
    # the listing still works and YAML models can be described too
    listing = run_cli("models")
    assert listing.returncode == 0 and "yolo_tiny" in listing.stdout
    yaml_desc = run_cli("models", "describe", "yolo_tiny")
    assert yaml_desc.returncode == 0 and "host" in yaml_desc.stdout


def test_profile_onnx_cnn_on_opencl_and_fit(tmp_path):
    from governor.profiler.runner import DeviceError, select_device

    try:
        select_device()
    except DeviceError as exc:
        pytest.skip(f"no OpenCL device can build kernels here: {exc}")
    path = tiny_cnn(tmp_path / "cnn.onnx")
    out = run_cli("profile", "--model", path, "--no-dvfs", "--cpu-khz", 1_000_000, "--gpu-hz", 100_000_000,
                  "--repeats", 3, "--warmup", 1, "-o", tmp_path / "cnn.profile.json")
    assert out.returncode == 0, out.stderr
    prof = parse_profile(json.loads((tmp_path / "cnn.profile.json").read_text()))
    assert [(x.name, x.kind) for x in prof.runs[0].layers] == [
        ("conv1", "gpu"), ("relu1", "gpu"), ("pool1", "gpu"), ("dw2", "gpu"), ("gap", "gpu"), ("fc", "gpu"),
        ("softmax", "gpu"), ("topk", "cpu")]
    assert len(prof.runs) == 3
    fit = run_cli("fit", tmp_path / "cnn.profile.json", "-o", tmp_path / "cnn.est.json")
    assert fit.returncode == 0, fit.stderr
    est = Estimator.from_json((tmp_path / "cnn.est.json").read_text())
    measured = np.median([r.latency_ns for r in prof.runs]) / 1e6
    predicted = float(est.latency_ms(1_000_000, 100_000_000)[0])
    assert 0.3 * measured < predicted < 3 * measured  # a shared CPU is noisy: the right magnitude


def test_import_ort_profile_of_the_tiny_cnn(tmp_path):
    model = tiny_cnn(tmp_path / "cnn.onnx")
    fast = ort_profile(model, tmp_path / "ort")
    slow = ort_profile(model, tmp_path / "ort")
    out = run_cli("import-ort", f"{fast}@2000000,100000000", f"{slow}@1000000,100000000", "--warmup", 1,
                  "--model", "cnn", "-o", tmp_path / "ort.profile.json")
    assert out.returncode == 0, out.stderr
    prof = parse_profile(json.loads((tmp_path / "ort.profile.json").read_text()))
    assert len(prof.runs) == 6  # 4 runs per file, one warm-up dropped each
    names = [x.name for x in prof.runs[0].layers]
    assert names == ["conv1", "relu1", "pool1", "dw2", "gap", "flatten", "fc", "softmax", "topk"]
    assert all(x.kind == "cpu" for x in prof.runs[0].layers)  # the CPU provider ran everything
    assert prof.device == "onnxruntime:CPUExecutionProvider"
    assert {r.cpu_khz for r in prof.runs} == {1_000_000, 2_000_000}
    for run in prof.runs:  # layers inside the run, in order
        assert run.layers[-1].cpu_end_ns <= run.latency_ns
    fit = run_cli("fit", tmp_path / "ort.profile.json", "-o", tmp_path / "ort.est.json")
    assert fit.returncode == 0, fit.stderr
    bad = run_cli("import-ort", f"{fast}", "-o", tmp_path / "x.json")
    assert bad.returncode == 2 and "FILE@CPU_KHZ,GPU_HZ" in bad.stderr


def _node(name, ts, dur, provider, op="Op"):
    return {"cat": "Node", "ph": "X", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "pid": 1, "tid": 1,
            "args": {"provider": provider, "op_name": op}}


def _kernel(name, ts, dur, parent=None):
    args = {"parent_name": parent} if parent else {}
    return {"cat": "Kernel", "ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 2, "args": args}


def test_cuda_ep_kernel_events_become_device_intervals():
    """Events laid out as ONNX Runtime's CUDA profiling writes them (kernels after their node), since
    no CUDA build of onnxruntime with CUPTI runs here."""
    cuda = "CUDAExecutionProvider"
    events = [
        _node("conv", 100, 10, cuda, "Conv"), _kernel("implicit_gemm", 115, 50),
        _node("reshape", 111, 2, cuda, "Reshape"),  # launched nothing: its host time joins the next launch
        _node("add", 114, 5, cuda, "Add"), _kernel("elementwise_add", 166, 5, parent="add"),
        _kernel("elementwise_add_tail", 172, 3, parent="add"),
        _node("nms", 120, 30, "CPUExecutionProvider", "NonMaxSuppression"),  # fallback: waits for the drain
        {"cat": "Session", "ph": "X", "name": "model_run", "ts": 99, "dur": 120, "pid": 1, "tid": 1, "args": {}},
    ]
    (run,), providers = runs_from_ort(events, "synthetic")
    assert providers == {cuda, "CPUExecutionProvider"}
    layers = {x["name"]: x for x in run["layers"]}
    assert list(layers) == ["conv", "add", "nms"]
    assert (layers["conv"]["gpu_start_ns"], layers["conv"]["gpu_end_ns"]) == (16_000, 66_000)
    assert (layers["add"]["gpu_start_ns"], layers["add"]["gpu_end_ns"]) == (67_000, 76_000)
    assert layers["nms"]["kind"] == "cpu" and layers["nms"]["cpu_start_ns"] == 76_000  # after the drain
    assert run["latency_ns"] == 120_000
    no_kernels = [e for e in events if e["cat"] != "Kernel"]
    with pytest.raises(TraceError, match="no 'Kernel' events"):
        runs_from_ort(no_kernels, "synthetic")


def test_missing_onnx_names_the_extra(tmp_path):
    path = tiny_cnn(tmp_path / "cnn.onnx")
    code = ("import sys; sys.modules['onnx'] = None; from governor.cli import main; "
            f"sys.argv = ['dvfs-gov', 'models', 'describe', {str(path)!r}]; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: reading ONNX models needs the onnx package: pip install 'deadline-dvfs[onnx]'"
