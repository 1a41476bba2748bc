"""The wheel holds exactly the checkout's packages: a plain `pip install .` once lost governor.profiler.

The wheel is built the way pip builds it for a user (PEP 517, isolated build) from a copy of the
checkout, and its file list is compared with what the checkout's package folders hold.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("dvfs_schema", "governor", "estimator", "sysfs_backends")
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", ".whl")


def checkout_files() -> set[str]:
    """What the wheel must hold: every module of the code packages, and configs/ as dvfs_configs."""
    want = set()
    for pkg in CODE_PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "__pycache__" not in path.parts:
                want.add(path.relative_to(ROOT).as_posix())
    want.add("dvfs_configs/__init__.py")
    for path in [*(ROOT / "configs").glob("*/*.yaml"), *(ROOT / "configs").glob("systemd/*.service")]:
        want.add("dvfs_configs/" + path.relative_to(ROOT / "configs").as_posix())
    return want


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = (tmp / "dist").glob("deadline_dvfs-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_holds_every_module_and_config_and_nothing_else(wheel):
    names = {n for n in wheel.namelist() if ".dist-info/" not in n}
    want = checkout_files()
    assert "governor/profiler/runner.py" in want  # the subpackage that was once left out
    assert not want - names, f"missing from the wheel: {sorted(want - names)}"
    assert not names - want, f"in the wheel but not a package file of the checkout: {sorted(names - want)}"


def test_wheel_declares_the_command(wheel):
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry).decode()
    assert "dvfs-gov = governor.cli:main" in text
