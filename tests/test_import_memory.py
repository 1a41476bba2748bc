"""Imported traces with the memory domain: FILE@cpu=,gpu=,mem=,ctx= labels, --mem-table and --board,
profiles over (cpu, gpu, mem) fitted into three-domain estimators, and one-line errors for bad labels.

The files are real (a PyTorch-profiler trace recorded on an H100, ONNX Runtime profiles written by
onnxruntime here); the frequencies are the labels a user gives, as on a board we cannot reach.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from estimator.model import Estimator
from estimator.profile import parse_profile
from governor.profiler.import_spec import board_tables, parse_spec, profile_tables
from governor.profiler.trace_import import TraceError

FIXTURE = Path(__file__).parent / "fixtures" / "torch_trace.json"
CLI = [sys.executable, "-m", "governor.cli"]
# RK3588: dmc levels (Hz), Mali GPU (Hz), the big cluster (kHz)
RK_MEM = (528000000, 1068000000, 2112000000)
RK_POINTS = [(2400000, 1000000000), (1200000, 500000000), (816000, 1000000000)]


def run_cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_torch_traces_at_three_memory_levels_fit_three_domains(tmp_path):
    labels = [f"{FIXTURE}@mem={m},cpu={c},gpu={g}" for m in RK_MEM for c, g in RK_POINTS[:2]]
    out = run_cli("import-trace", *labels, "--board", "rk3588", "--model", "tiny", "--device", "rk3588",
                  "-o", tmp_path / "p.json")
    assert out.returncode == 0, out.stderr
    assert "18 runs of 14 layers from 6 trace(s) over cpu/gpu/mem" in out.stdout
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["frequencies"]["mem_hz"] == [528000000, 1068000000, 1560000000, 2112000000]  # the board's table
    assert len(data["frequencies"]["cpu_khz"]) == 14 and len(data["frequencies"]["gpu_hz"]) == 8
    prof = parse_profile(data)
    assert {r.mem_hz for r in prof.runs} == set(RK_MEM)
    assert {(r.cpu_khz, r.gpu_hz, r.mem_hz) for r in prof.runs} == {(c, g, m) for m in RK_MEM for c, g in RK_POINTS[:2]}
    fit = run_cli("fit", tmp_path / "p.json", "-o", tmp_path / "e.json")
    assert fit.returncode == 0, fit.stderr
    est = Estimator.from_json((tmp_path / "e.json").read_text())
    assert est.data.domains == ["cpu", "gpu", "mem"]
    assert est.data.mem_hz == data["frequencies"]["mem_hz"]
    grid = run_cli("estimate", tmp_path / "e.json", "--grid", "--json")
    assert grid.returncode == 0, grid.stderr
    rows = json.loads(grid.stdout)
    rows = rows["grid"] if isinstance(rows, dict) else rows
    assert len(rows) == 14 * 8 * 4 and {r["mem_hz"] for r in rows} == set(data["frequencies"]["mem_hz"])


def test_positional_form_still_works_and_writes_no_memory_axis(tmp_path):
    out = run_cli("import-trace", f"{FIXTURE}@2000000,1020000000", f"{FIXTURE}@cpu=1000000,gpu=600000000",
                  "--model", "tiny", "--device", "h100", "-o", tmp_path / "p.json")
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert "mem_hz" not in data["frequencies"] and all("mem_hz" not in r for r in data["runs"])
    assert data["frequencies"] == {"cpu_khz": [1000000, 2000000], "gpu_hz": [600000000, 1020000000]}


def test_onnxruntime_profiles_at_memory_levels_fit_three_domains(tmp_path):
    pytest.importorskip("onnx")
    sys.path.insert(0, str(Path(__file__).parent))
    from onnx_builders import ort_profile, tiny_cnn

    model = tiny_cnn(tmp_path / "cnn.onnx")
    labels = []
    for m in RK_MEM:
        for c, g in RK_POINTS:
            labels.append(f"{ort_profile(model, tmp_path / f'ort_{m}_{c}', runs=3)}@cpu={c},gpu={g},mem={m}")
    out = run_cli("import-ort", *labels, "--warmup", 1, "--model", "cnn",
                  "--cpu-table", ",".join(str(c) for c, _ in sorted(RK_POINTS)),
                  "--gpu-table", "500000000,1000000000", "--mem-table", ",".join(map(str, RK_MEM)),
                  "-o", tmp_path / "ort.json")
    assert out.returncode == 0, out.stderr
    assert "18 runs of 9 layers (0 on the device, 9 on the host) from 9 file(s) over cpu/gpu/mem" in out.stdout
    prof = parse_profile(json.loads((tmp_path / "ort.json").read_text()))
    assert prof.domains == ["cpu", "gpu", "mem"] and prof.frequencies.mem_hz == list(RK_MEM)
    assert sorted({r.mem_hz for r in prof.runs}) == list(RK_MEM)
    fit = run_cli("fit", tmp_path / "ort.json", "-o", tmp_path / "ort.est.json")
    assert fit.returncode == 0, fit.stderr
    est = Estimator.from_json((tmp_path / "ort.est.json").read_text())
    assert est.data.domains == ["cpu", "gpu", "mem"]
    # the runs are real timings of a tiny CNN on this CPU: the fit predicts their magnitude
    measured = sorted(r.latency_ns for r in prof.runs)[len(prof.runs) // 2] / 1e6
    predicted = float(est.latency_ms(1200000, 500000000, None, 1068000000)[0])
    assert 0.2 * measured < predicted < 5 * measured


def test_board_gives_mem_in_its_unit_and_refuses_other_levels():
    sd888 = board_tables("sd888_phone", None, None, None)
    assert sd888.tables["mem"] == [762, 1720, 2929, 3879, 5161, 6515, 8136]  # MB/s, the node's unit
    ok = parse_spec("a.json@cpu=2841600,gpu=840000000,mem=2929", sd888)
    assert (ok.cpu_khz, ok.gpu_hz, ok.mem_hz, ok.context_len) == (2841600, 840000000, 2929, None)
    with pytest.raises(TraceError, match=r"mem=3000 is not a level of the table: board sd888_phone's memory "
                                         r"domain \(.*\) allows 762, 1720, .*8136 \(MB/s\)"):
        parse_spec("a.json@cpu=2841600,gpu=840000000,mem=3000", sd888)


@pytest.mark.parametrize(("spec", "board", "tables", "message"), [
    ("a.json@cpu=1,gpu=2,clock=3", None, {}, r"unknown key 'clock'; allowed: cpu, gpu, mem, ctx"),
    ("a.json@1800000,mem=2112000000", None, {}, r"mixes positional and named labels"),
    ("a.json@cpu=1,cpu=2", None, {}, r"cpu= given twice"),
    ("a.json@gpu=2,mem=3", None, {}, r"cpu= is required"),
    ("a.json@cpu=fast", None, {}, r"cpu='fast' is not an integer"),
    ("a.json", None, {}, r"write FILE@cpu=KHZ,gpu=HZ,mem=LEVEL,ctx=N"),
    ("a.json@cpu=1,gpu=2,mem=5", None, {"mem": "4,6"},
     r"mem=5 is not a level of the table: --mem-table allows 4, 6"),
    ("a.json@1,2", None, {"mem": "4,6"}, r"positional form has no memory level but --mem-table has one"),
    ("a.json@cpu=2401000,gpu=848000000,mem=5", "pixel6_phone", {},
     r"mem=5 given but board pixel6_phone has no memory domain; drop mem="),
    ("a.json@cpu=2400000,gpu=1", "rpi5", {}, r"gpu=1 given but board rpi5 has no GPU domain; drop gpu="),
    ("a.json@cpu=2400001,gpu=1000000000", "rk3588", {},
     r"cpu=2400001 is not a level of the table: board rk3588's CPU domain \(policy\d\) allows 408000, "
     r".*2400000 \(kHz\)"),
    ("a.json@cpu=2400000,mem=2112000000", "rk3588", {}, r"gpu= is required: board rk3588's GPU domain"),
    ("a.json@cpu=2400000,gpu=1000000000", "rk3588", {"cpu": "1"}, r"give the board or the tables, not both"),
])
def test_bad_labels_name_the_argument_and_the_allowed_values(spec, board, tables, message):
    with pytest.raises(TraceError, match=message):
        parse_spec(spec, board_tables(board, tables.get("cpu"), tables.get("gpu"), tables.get("mem")))


def test_named_labels_in_any_order_with_context_and_without_gpu():
    free = board_tables(None, None, None, None)
    run = parse_spec("dir@x/a.json@ctx=0,mem=1720,gpu=540000000,cpu=2841600", free)
    assert (run.source, run.cpu_khz, run.gpu_hz, run.mem_hz, run.context_len) == \
        ("dir@x/a.json", 2841600, 540000000, 1720, 0)
    rpi5 = board_tables("rpi5", None, None, None)  # no GPU, no memory domain: the CPU alone
    runs = [parse_spec("a.json@cpu=2400000", rpi5), parse_spec("b.json@cpu=1500000", rpi5)]
    assert runs[0].gpu_hz is None and runs[0].mem_hz is None
    assert profile_tables(runs, rpi5) == {"cpu": list(range(1500000, 2400001, 100000)), "gpu": [], "mem": []}


def test_every_file_or_none_says_its_memory_level():
    tables = board_tables(None, None, None, None)
    runs = [parse_spec("a.json@cpu=1,gpu=2,mem=3", tables), parse_spec("b.json@cpu=1,gpu=2", tables)]
    with pytest.raises(TraceError, match=r"'b.json' has no mem= but 'a.json' has mem=3: label every file"):
        profile_tables(runs, tables)
    # a board with a memory domain whose traces were all taken without saying the level: no memory axis
    rk = board_tables("rk3588", None, None, None)
    plain = [parse_spec("a.json@cpu=2400000,gpu=1000000000", rk)]
    assert profile_tables(plain, rk)["mem"] == []
    with pytest.raises(TraceError, match=r"--mem-table given but no file says its level"):
        given = board_tables(None, None, None, "1,2")
        profile_tables([parse_spec("a.json@cpu=1,gpu=2", given)], given)


def test_cli_errors_are_one_line(tmp_path):
    err = one_line_error(run_cli("import-trace", f"{FIXTURE}@cpu=2400000,gpu=1000000000,mem=1", "--board", "rk3588",
                                 "--model", "t", "--device", "d", "-o", tmp_path / "x.json"))
    assert "mem=1 is not a level of the table: board rk3588's memory domain (dmc) allows 528000000" in err
    err = one_line_error(run_cli("import-ort", f"{FIXTURE}@cpu=1,gpu=2,mhz=3", "-o", tmp_path / "x.json"))
    assert "unknown key 'mhz'; allowed: cpu, gpu, mem, ctx" in err
    err = one_line_error(run_cli("import-ort", f"{FIXTURE}@cpu=1,gpu=2", "--mem-table", "1,x",
                                 "-o", tmp_path / "x.json"))
    assert err == "error: --mem-table: write integers separated by commas, got '1,x'"
    err = one_line_error(run_cli("import-trace", f"{FIXTURE}@cpu=1,gpu=2", "--board", "no_such_board",
                                 "--model", "t", "--device", "d", "-o", tmp_path / "x.json"))
    assert "unknown board 'no_such_board'; allowed:" in err and "rk3588" in err
    assert not (tmp_path / "x.json").exists()
