"""Every command of `dvfs-gov`, walked from the click group: one example in its help, -v and
--log-level accepted, and the listings' --json output parses. Also `python -m governor`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from governor.cli import main

CLI = [sys.executable, "-m", "governor"]
FIXTURE = Path(__file__).parent / "fixtures" / "torch_trace.json"


def every_command(group: click.Group = main, path: tuple[str, ...] = ()):
    yield path, group
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from every_command(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(every_command())


def test_the_walk_sees_every_command():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "top", "install-service", "status", "models", "models describe", "plot run", "run"} <= names
    assert len(names) >= 25


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "dvfs-gov")
def test_help_ends_with_an_example_and_takes_the_common_options(path):
    res = CliRunner().invoke(main, [*path, "--help"], prog_name="dvfs-gov")
    assert res.exit_code == 0, res.output
    lines = [line.strip() for line in res.output.splitlines() if line.strip()]
    examples = [line for line in lines if line.startswith("Example: ")]
    assert len(examples) == 1, res.output
    assert "dvfs-gov " in examples[0]
    assert "--log-level" in res.output and "-v, --verbose" in res.output


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_python_dash_m_governor_runs_the_cli():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("dvfs-gov, version")
    out = cli("--help")
    assert out.returncode == 0 and "Usage: dvfs-gov" in out.stdout


@pytest.mark.parametrize("args", [("boards",), ("models",), ("plan", "--board", "sd888_phone")])
def test_listing_json_parses(args):
    out = cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert isinstance(rows, list) and rows
    if args == ("models",):
        yolo = next(r for r in rows if r["name"] == "yolo_tiny")
        assert yolo["kind"] == "detector" and yolo["layers"] > 0


def test_devices_json_parses():
    out = cli("devices", "--json")
    assert out.returncode in (0, 2), out.stderr
    if out.returncode == 0:
        assert isinstance(json.loads(out.stdout), list)


def test_simulate_fit_and_import_summaries_as_json(tmp_path):
    out = cli("simulate", "--board", "sd888_phone", "--model", "yolo_tiny", "-o", tmp_path / "p.json", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["model"] == "yolo_tiny" and summary["runs"] == 24 and summary["points"] == 8  # 3 domains: 8 points
    out = cli("fit", tmp_path / "p.json", "-o", tmp_path / "e.json", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["runs"] == 24 and summary["layers"] > 0 and summary["fit_mape_pct"] >= 0
    out = cli("import-trace", f"{FIXTURE}@2000000,1020000000", f"{FIXTURE}@1000000,600000000", "--model", "tiny",
              "--device", "h100", "-o", tmp_path / "t.json", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"runs": 6, "layers": 14, "traces": 2, "output": str(tmp_path / "t.json")}


def test_import_ort_summary_as_json(tmp_path):
    pytest.importorskip("onnx")
    sys.path.insert(0, str(Path(__file__).parent))
    from onnx_builders import ort_profile, tiny_cnn

    prof = ort_profile(tiny_cnn(tmp_path / "cnn.onnx"), tmp_path / "ort")
    out = cli("import-ort", f"{prof}@2000000,100000000", "-o", tmp_path / "o.json", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["runs"] == 4 and summary["layers"] == 9 and summary["host_layers"] == 9


def test_log_level_overrides_the_config_for_run(tmp_path):
    cfg = {"board": "sd888_phone", "socket": str(tmp_path / "gov.sock"), "log_level": "error",
           "backend": {"kind": "virtual", "virtual_root": str(tmp_path / "vb"),
                       "state_file": str(tmp_path / "saved.json")},
           "models": {"yolo": {"simulate": "yolo_tiny"}}}
    (tmp_path / "gov.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([*CLI, "run", "--log-level", "info", "--config", str(tmp_path / "gov.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if (tmp_path / "gov.sock").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "INFO profiling yolo_tiny on the virtual sd888_phone" in err
    out = cli("--log-level", "loud", "boards")
    assert out.returncode == 2 and "'loud' is not one of 'debug', 'info', 'warning', 'error'" in out.stderr
