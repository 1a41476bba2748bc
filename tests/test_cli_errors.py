"""Every `dvfs-gov` error a user can cause is one line naming the file or field, exit status 2.

Real files on disk (missing, a directory, invalid JSON/YAML, the wrong schema, unreadable, not text)
given to each command that reads one, through click's CliRunner; plus the checks added for a first
real run: fit's identifiability warnings, option ranges, where a config's estimator is looked for,
and `profile --backend android` refusing to time this machine's device for a phone's frequencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

# Imported before `as_nobody` drops privileges: the commands import these lazily, and where the
# interpreter lives under a 0700 home they could not be imported as nobody.
import governor.app  # noqa: F401
import governor.daemon  # noqa: F401
import governor.profiler.trace_import  # noqa: F401
import sysfs_backends.sysfs  # noqa: F401
from dvfs_schema.loading import ConfigError
from governor.cli import main
from governor.config import estimator_path, load_governor_config

NOBODY = 65534


@contextlib.contextmanager
def as_nobody():
    """Root reads every file whatever its mode: drop the effective uid so that 0000 means unreadable."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


def invoke(*args, nobody: bool = False):
    runner = CliRunner()
    with as_nobody() if nobody else contextlib.nullcontext():
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(res, *names: str, code: int = 2) -> str:
    text = res.output
    assert res.exit_code == code, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, text
    for name in names:
        assert name in errors[0], text
    return errors[0]


@pytest.fixture
def bad_files(tmp_path):
    """name -> path of a file that cannot be used, each in its own way."""
    files = {
        "missing": tmp_path / "missing.json",
        "directory": tmp_path / "a_dir.json",
        "invalid_json": tmp_path / "invalid.json",
        "binary": tmp_path / "binary.json",
        "wrong_schema": tmp_path / "schema.json",
        "socket": tmp_path / "socket.json",
        "unreadable": tmp_path / "unreadable.json",
    }
    files["directory"].mkdir()
    files["invalid_json"].write_text('{"format": "deadline-dvfs.profile/1", "runs": [')
    files["binary"].write_bytes(b"\xff\xfe\x00garbage")
    files["wrong_schema"].write_text(json.dumps({"format": "deadline-dvfs.profile/1", "model": 3, "runs": []}))
    sock = socket.socket(socket.AF_UNIX)  # a socket file: open() fails even for root (ENXIO)
    sock.bind(str(files["socket"]))
    sock.close()
    files["unreadable"].write_text("{}")
    files["unreadable"].chmod(0)
    return files


CASES = ["missing", "directory", "invalid_json", "binary", "wrong_schema", "socket", "unreadable"]


@pytest.mark.parametrize("case", CASES)
def test_fit_names_the_profile(tmp_path, bad_files, case):
    out = tmp_path / "out" / "e.json"
    res = invoke("fit", bad_files[case], "-o", out, nobody=case == "unreadable")
    assert_one_line_error(res, bad_files[case].name)
    assert not out.exists()


@pytest.mark.parametrize("case", CASES)
def test_estimate_names_the_estimator_file(bad_files, case):
    res = invoke("estimate", bad_files[case], "--grid", nobody=case == "unreadable")
    assert_one_line_error(res, bad_files[case].name)


@pytest.mark.parametrize("case", CASES)
def test_import_trace_names_the_trace(tmp_path, bad_files, case):
    res = invoke("import-trace", f"{bad_files[case]}@1000000,500000000", "--model", "m", "--device", "d",
                 "-o", tmp_path / "p.json", nobody=case == "unreadable")
    assert_one_line_error(res, bad_files[case].name)


@pytest.fixture
def bad_yaml(tmp_path):
    files = {"missing": tmp_path / "missing.yaml", "directory": tmp_path / "dir.yaml",
             "invalid_yaml": tmp_path / "invalid.yaml", "binary": tmp_path / "binary.yaml",
             "wrong_schema": tmp_path / "schema.yaml", "unreadable": tmp_path / "unreadable.yaml"}
    files["directory"].mkdir()
    files["invalid_yaml"].write_text("board: [sd888_phone\nmodels:\n")
    files["binary"].write_bytes(b"\xff\xfe\x00garbage")
    files["wrong_schema"].write_text("board: sd888_phone\nmodels: {yolo: {simulate: yolo_tiny}}\nsocket_mod: 0660\n")
    files["unreadable"].write_text("board: sd888_phone\n")
    files["unreadable"].chmod(0)
    return files


@pytest.mark.parametrize("case", ["missing", "directory", "invalid_yaml", "binary", "wrong_schema", "unreadable"])
def test_run_names_the_governor_config(bad_yaml, case):
    res = invoke("run", "--config", bad_yaml[case], nobody=case == "unreadable")
    line = assert_one_line_error(res, bad_yaml[case].name)
    if case == "wrong_schema":
        assert "socket_mod" in line
    if case == "invalid_yaml":
        assert "line" in line


@pytest.mark.parametrize("case", ["directory", "invalid_yaml", "binary"])
def test_plan_names_the_board_file(bad_yaml, case):
    res = invoke("plan", "--board", bad_yaml[case])
    assert_one_line_error(res, bad_yaml[case].name)


def test_output_path_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    res = invoke("simulate", "--board", "rk3588", "--model", "yolo_tiny", "--repeats", 1,
                 "-o", tmp_path / "file" / "p.json")
    assert_one_line_error(res, "file/p.json", "not a folder")


def test_option_ranges_are_checked_before_anything_runs(tmp_path):
    for args in (["plan", "--board", "rk3588", "-n", "0"],
                 ["simulate", "--board", "rk3588", "--model", "yolo_tiny", "--repeats", "0", "-o", tmp_path / "p"],
                 ["simulate", "--board", "rk3588", "--model", "yolo_tiny", "--seed", "-1", "-o", tmp_path / "p"],
                 ["simulate", "--board", "rk3588", "--model", "yolo_tiny", "--mode", "999", "-o", tmp_path / "p"],
                 ["demo", "--duration", "0"]):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and "Invalid value" in res.output, res.output


# ---- a bug is not a user error ------------------------------------------------------------
@pytest.fixture
def buggy_command():
    @click.command("buggy")
    def buggy() -> None:
        {}["no such key"]  # noqa: B018 - a genuine programming error

    main.add_command(buggy)
    yield
    main.commands.pop("buggy")


def test_unexpected_error_is_one_line_without_v_and_a_traceback_with_v(buggy_command):
    res = invoke("buggy")
    line = assert_one_line_error(res, "KeyError", "-v", code=1)
    assert "bug" in line
    res = CliRunner().invoke(main, ["-v", "buggy"])
    assert isinstance(res.exception, KeyError)  # propagates: click prints its traceback


@pytest.mark.parametrize("where", ["before", "after"])
def test_user_error_with_v_shows_the_traceback_too(tmp_path, where):
    (tmp_path / "e.json").write_text("{")
    args = ["estimate", tmp_path / "e.json", "--grid"]
    res = invoke("-v", *args) if where == "before" else invoke(*args, "-v")
    assert res.exit_code == 2
    assert "Traceback" in res.output
    assert res.output.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'e.json'}: not valid JSON")
    assert "Traceback" not in invoke(*args).output


# ---- estimate / fit ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def estimator_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("est")
    assert invoke("simulate", "--board", "rk3588", "--model", "yolo_tiny", "-o", d / "p.json").exit_code == 0
    assert invoke("fit", d / "p.json", "-o", d / "yolo.est.json").exit_code == 0
    return d / "yolo.est.json"


def test_estimate_refuses_a_negative_context_length(estimator_file):
    res = invoke("estimate", estimator_file, "--grid", "--context-len", "-5")
    assert res.exit_code == 2
    assert "--context-len" in res.output and "-5 is not in the range" in res.output


def fit_warnings(tmp_path, *simulate_args) -> list[str]:
    res = invoke("simulate", "--board", "rk3588", "--model", "yolo_tiny", *simulate_args, "-o", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    res = invoke("fit", tmp_path / "p.json", "-o", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    return [line for line in res.output.splitlines() if line.startswith("warning:")]


def test_fit_warns_for_one_pair_one_run(tmp_path):
    warnings = fit_warnings(tmp_path, "-n", 1, "--repeats", 1)
    text = "\n".join(warnings)
    assert "one frequency pair" in text and "single run" in text
    assert all("p.json" in w for w in warnings)


def test_fit_warns_for_too_few_pairs(tmp_path):
    assert any("only 2 distinct frequency pairs" in w for w in fit_warnings(tmp_path, "-n", 2))


def test_fit_warns_for_one_cpu_frequency(tmp_path, valid_profile):
    for run in valid_profile["runs"]:
        run["cpu_khz"] = 2400000
    valid_profile["runs"][1]["gpu_hz"] = 250000000
    (tmp_path / "p.json").write_text(json.dumps(valid_profile))
    res = invoke("fit", tmp_path / "p.json", "-o", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    assert "one CPU frequency (2400000 kHz)" in res.output


def test_fit_of_the_planned_profile_does_not_warn(tmp_path):
    assert fit_warnings(tmp_path) == []


# ---- first real-board run --------------------------------------------------------------------
def test_bundled_real_board_config_finds_its_estimator_in_the_working_directory(tmp_path, monkeypatch,
                                                                               estimator_file):
    """rk3588_linux.yaml says: `dvfs-gov fit ... -o yolo.est.json`, run where the user is."""
    monkeypatch.chdir(tmp_path)
    cfg, folder = load_governor_config("rk3588_linux")
    (name,) = [e.estimator for e in cfg.models.values()]
    assert name == "yolo.est.json" and not (folder / name).exists()
    with pytest.raises(ConfigError) as err:
        estimator_path(folder, name)
    assert str(folder / name) in str(err.value) and str(tmp_path / name) in str(err.value)
    (tmp_path / name).write_bytes(estimator_file.read_bytes())
    assert estimator_path(folder, name) == tmp_path / name


def test_run_says_both_places_it_looked_for_the_estimator(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "gov.yaml"
    path.write_text(yaml.safe_dump({"board": "sd888_phone", "socket": str(tmp_path / "s.sock"),
                                    "backend": {"kind": "virtual", "virtual_root": str(tmp_path / "vb"),
                                                "state_file": str(tmp_path / "saved.json")},
                                    "models": {"yolo": {"estimator": "yolo.est.json"}}}))
    monkeypatch.chdir(tmp_path)
    res = invoke("run", "--config", path)
    assert_one_line_error(res, str(conf / "yolo.est.json"), str(tmp_path / "yolo.est.json"), "dvfs-gov fit")
    assert not (tmp_path / "saved.json").exists()  # refused before the board was touched


def test_profile_on_a_phone_refuses_to_time_this_machines_device(tmp_path):
    res = invoke("profile", "--model", "yolo_tiny", "--board", "sd888_phone", "--backend", "android",
                 "--adb", "127.0.0.1:1", "--state-file", tmp_path / "saved.json", "-o", tmp_path / "p.json")
    line = assert_one_line_error(res, "--local-device-for-remote", "this machine's OpenCL device")
    assert "connect" not in line.lower()  # refused before trying the phone
    assert not (tmp_path / "p.json").exists()


def test_import_trace_names_a_malformed_frequency_argument(tmp_path):
    res = invoke("import-trace", "t.json@fast,1", "--model", "m", "--device", "d", "-o", tmp_path / "p.json")
    assert_one_line_error(res, "t.json@fast,1", "FILE@CPU_KHZ,GPU_HZ")
    res = invoke("import-trace", "t.json@1,2", "--cpu-table", "1,x", "--model", "m", "--device", "d",
                 "-o", tmp_path / "p.json")
    assert_one_line_error(res, "--cpu-table", "'1,x'")


def test_context_length_for_a_model_without_context_is_refused(tmp_path):
    res = invoke("simulate", "--board", "rk3588", "--model", "yolo_tiny", "--context-len", 64, "-o", tmp_path / "p")
    assert_one_line_error(res, "yolo_tiny", "not a language model", "--context-len")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_virtual_adb_stops_cleanly_on_a_signal(tmp_path, sig):
    """It waits for the signal with sigwait: unblocked, SIGTERM killed it (exit 143, nothing cleaned)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "governor.cli", "virtual-adb", "--port", "0", "--virtual-root",
                             str(tmp_path / "phone")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving ADB" in line, line + proc.stdout.read()
        time.sleep(0.2)
        proc.send_signal(getattr(signal, sig))
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
