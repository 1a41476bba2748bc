"""Installing the governor as a systemd service: the unit, the config under /etc, the steps to enable.

The unit is shipped in the wheel (``dvfs_configs/systemd/deadline-dvfs.service``) with two
placeholders filled at install time: the interpreter that has deadline-dvfs installed (a virtual
environment's python is the usual case, so ``/usr/bin/python3`` would not find the package) and
the config's path. Everything is written under ``prefix`` so that tests, packagers and image
builders install into a staging tree; nothing here runs systemctl unless asked to.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from pydantic import BaseModel

from dvfs_schema.loading import ConfigError

ETC_CONFIG = "/etc/deadline-dvfs/governor.yaml"
UNIT_NAME = "deadline-dvfs.service"
UNIT_DIR = "/etc/systemd/system"
SERVICE_SOCKET = "/run/deadline-dvfs/governor.sock"
ENABLE_STEPS = ["systemctl daemon-reload", "systemctl enable --now deadline-dvfs"]


class InstallPlan(BaseModel):
    """What install-service writes (paths as they will be on the target system, and under prefix)."""

    unit_path: str
    unit_text: str
    config_path: str
    config_source: str | None  # None: an existing config is kept
    config_text: str | None
    notes: list[str]


def unit_template() -> str:
    """The shipped unit (from the wheel's dvfs_configs, or the checkout's configs/ when not installed)."""
    try:
        path = Path(str(resources.files("dvfs_configs"))) / "systemd" / UNIT_NAME
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parent.parent / "configs" / "systemd" / UNIT_NAME
    return path.read_text(encoding="utf-8")


def _under(prefix: Path, path: str) -> Path:
    return prefix / path.lstrip("/")


def plan_install(config: str | None, prefix: str = "/", python: str | None = None) -> InstallPlan:
    """Work out the unit and the config to write; raises ConfigError for a config that is not usable."""
    from governor.config import load_governor_config

    # absolute but not resolved: a virtual environment's python is a symlink to the base interpreter,
    # and only through the link does it find the environment's site-packages
    interpreter = str(Path(python or sys.executable).absolute())
    root = Path(prefix)
    notes: list[str] = []
    target = _under(root, ETC_CONFIG)
    source_text = None
    source = None
    if target.exists():
        notes.append(f"{target} exists: kept as it is (edit it, or remove it to install another)")
        if config:
            notes.append(f"--config {config} was not copied over the existing config")
    else:
        if not config:
            raise ConfigError(f"no config at {target}: give --config FILE (e.g. a copy of the bundled "
                              "configs/governor/rk3588_linux.yaml set up for your board)")
        cfg, _ = load_governor_config(config)  # refuse a broken config before installing anything
        from dvfs_schema.loading import resolve

        found = resolve("governor", config)
        source, source_text = str(found.resolve()), found.read_text(encoding="utf-8")
        if not cfg.socket.startswith("/run/deadline-dvfs/"):
            new_text, n = re.subn(r"(?m)^socket:.*$", f"socket: {SERVICE_SOCKET}", source_text)
            source_text = new_text if n else source_text.rstrip("\n") + f"\nsocket: {SERVICE_SOCKET}\n"
            notes.append(f"socket {cfg.socket} -> {SERVICE_SOCKET} in the installed config "
                         "(the service's runtime folder; `dvfs-gov top` finds it there)")
        if cfg.socket_group is None:
            notes.append("no socket_group in the config: only root can connect; set socket_group (and "
                         "socket_mode: 0660) to let an app's group connect")
    unit = unit_template().replace("@PYTHON@", interpreter).replace("@CONFIG@", ETC_CONFIG)
    return InstallPlan(unit_path=str(_under(root, UNIT_DIR) / UNIT_NAME), unit_text=unit,
                       config_path=str(target), config_source=source, config_text=source_text, notes=notes)


def write_install(plan: InstallPlan) -> list[str]:
    """Write what the plan says; returns one line per file written."""
    done = []
    unit = Path(plan.unit_path)
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(plan.unit_text, encoding="utf-8")
    unit.chmod(0o644)
    done.append(f"wrote {unit}")
    if plan.config_text is not None:
        cfg = Path(plan.config_path)
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(plan.config_text, encoding="utf-8")
        cfg.chmod(0o644)
        done.append(f"wrote {cfg} (from {plan.config_source})")
    return done


def enable() -> None:
    """Run the enable steps (only on `--enable`: it starts the service on this machine)."""
    if shutil.which("systemctl") is None:
        raise ConfigError("systemctl not found: this system does not run systemd; start `dvfs-gov run` "
                          "from your init system instead")
    for step in ENABLE_STEPS:
        subprocess.run(step.split(), check=True)
