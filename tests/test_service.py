"""`dvfs-gov install-service` into a staging prefix, and the shipped unit: it parses (systemd-analyze
when present, else configparser), runs the interpreter that has deadline-dvfs, and says how to stop."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

CLI = [sys.executable, "-m", "governor"]
UNIT = Path("etc/systemd/system/deadline-dvfs.service")
CONFIG = Path("etc/deadline-dvfs/governor.yaml")


def install(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "install-service", "--prefix", str(prefix), *args], capture_output=True,
                          text=True, timeout=60)


def unit_sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def test_install_writes_unit_and_config_under_prefix(tmp_path):
    out = install(tmp_path, "--config", "virtual_phone")
    assert out.returncode == 0, out.stderr
    assert "systemctl daemon-reload && sudo systemctl enable --now deadline-dvfs" in out.stdout
    unit = (tmp_path / UNIT).read_text()
    svc = unit_sections(unit)["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == str(Path(sys.executable).absolute()) and "@" not in unit
    assert argv[1:] == ["-m", "governor", "run", "--config", "/etc/deadline-dvfs/governor.yaml"]
    assert svc["Restart"] == "on-failure" and svc["KillSignal"] == "SIGTERM"
    assert int(svc["TimeoutStopSec"]) >= 30 and svc["RuntimeDirectory"] == "deadline-dvfs"
    assert svc.get("ProtectKernelTunables", "no") == "no"  # it must still write /sys
    assert unit_sections(unit)["Install"]["WantedBy"] == "multi-user.target"
    assert "Conflicts" not in unit_sections(unit)["Unit"]  # other managers are refused by the daemon, not stopped
    # the interpreter in ExecStart really runs the governor package
    ran = subprocess.run([argv[0], "-m", "governor", "--version"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.startswith("dvfs-gov, version")
    cfg = yaml.safe_load((tmp_path / CONFIG).read_text())
    assert cfg["socket"] == "/run/deadline-dvfs/governor.sock" and cfg["board"] == "sd888_phone"
    assert "-> /run/deadline-dvfs/governor.sock" in out.stderr


def test_unit_verifies_with_systemd_when_available(tmp_path):
    assert install(tmp_path, "--config", "virtual_phone").returncode == 0
    if shutil.which("systemd-analyze") is None:
        unit_sections((tmp_path / UNIT).read_text())  # at least it parses as an ini file
        return
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / UNIT)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "deadline-dvfs.service" not in out.stderr  # no complaint about our unit


def test_existing_config_is_kept_and_dry_run_writes_nothing(tmp_path):
    (tmp_path / CONFIG).parent.mkdir(parents=True)
    (tmp_path / CONFIG).write_text("# mine\nboard: rk3588\n")
    out = install(tmp_path, "--config", "virtual_phone")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / CONFIG).read_text() == "# mine\nboard: rk3588\n"
    assert "exists: kept" in out.stderr
    dry = tmp_path / "dry"
    out = install(dry, "--config", "virtual_phone", "--dry-run")
    assert out.returncode == 0 and "would write" in out.stdout and "ExecStart=" in out.stdout
    assert not dry.exists()


def test_install_refuses_without_any_config_or_with_a_broken_one(tmp_path):
    out = install(tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: no config at") and "--config" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("board: sd888_phone\nmodels: {}\n")
    out = install(tmp_path, "--config", str(bad))
    assert out.returncode == 2 and "models" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / UNIT).exists()


def test_run_without_config_names_the_etc_location():
    if Path("/etc/deadline-dvfs/governor.yaml").exists():
        return  # a machine with the service installed: `run` would start it
    out = subprocess.run([*CLI, "run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no --config given and no /etc/deadline-dvfs/governor.yaml" in out.stderr
