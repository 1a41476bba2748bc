"""Apps that are not root: the daemon's socket group and mode, and files the CLI writes readable by all.

The checks that need two users run as root and switch a forked child to ``nobody`` (with or without
the socket's group), as a real app of another user would be.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import estimator.model  # noqa: F401 - imported before a child drops privileges (see run_as)
from dvfs_schema.loading import ConfigError
from governor.cli import main
from governor.config import load_governor_config

NOBODY = 65534
CLI = [sys.executable, "-m", "governor.cli"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")


def run_as(uid: int, gid: int, groups: list[int], fn: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """Run ``fn`` in a forked child under another user; its exit code and text. (Modules ``fn``
    needs are imported by the parent first: the interpreter may live in a home only root can read.)"""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 99
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            code, text = fn()
            os.write(w, text.encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


@pytest.fixture
def shared_dir():
    """A folder every user can reach (pytest's tmp_path is under a 0700 folder of root's)."""
    d = Path(tempfile.mkdtemp(prefix="dvfs-nonroot-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ---- files the CLI writes -------------------------------------------------------------------
def simulate(out: Path, *extra) -> None:
    res = CliRunner().invoke(main, ["simulate", "--board", "rk3588", "--model", "yolo_tiny", "--repeats", "1",
                                    "-o", str(out), *map(str, extra)])
    assert res.exit_code == 0, res.output


def test_written_files_are_0644_even_under_umask_077(tmp_path):
    old = os.umask(0o077)  # root's umask on many systems
    try:
        simulate(tmp_path / "p.json")
        res = CliRunner().invoke(main, ["fit", str(tmp_path / "p.json"), "-o", str(tmp_path / "e.json")])
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "e.json").stat().st_mode) == 0o644


def test_mode_option_gives_other_permissions(tmp_path):
    simulate(tmp_path / "p.json", "--mode", "0600")
    assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o600
    simulate(tmp_path / "p.json", "--mode", "640")  # replacing a file takes the new mode too
    assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o640


@needs_root
def test_profile_written_by_root_is_fitted_by_a_user(shared_dir):
    """`sudo dvfs-gov profile -o p.json` then, as the user, `dvfs-gov fit p.json`."""
    simulate(shared_dir / "p.json")  # root writes the profile, as `sudo dvfs-gov profile` does
    user_dir = shared_dir / "user"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, NOBODY)

    def fit() -> tuple[int, str]:
        res = CliRunner().invoke(main, ["fit", str(shared_dir / "p.json"), "-o", str(user_dir / "e.json")])
        return res.exit_code, res.output

    code, text = run_as(NOBODY, NOBODY, [], fit)
    assert code == 0, text
    assert "fitted yolo_tiny" in text
    assert (user_dir / "e.json").stat().st_uid == NOBODY


# ---- socket settings in the governor config ---------------------------------------------------
def write_config(folder: Path, socket_path: Path | None = None, **extra) -> Path:
    cfg = {"board": "sd888_phone", "socket": str(socket_path or folder / "gov.sock"),
           "backend": {"kind": "virtual", "virtual_root": str(folder / "vb"), "state_file": str(folder / "saved.json")},
           "models": {"yolo": {"simulate": "yolo_tiny"}}, **extra}
    path = folder / "gov.yaml"
    path.write_text(yaml.safe_dump(cfg).replace("__0660__", "0660"))
    return path


def test_socket_settings_default_and_octal_forms(tmp_path):
    cfg, _ = load_governor_config(write_config(tmp_path))
    assert cfg.socket_mode == 0o660 and cfg.socket_group is None
    cfg, _ = load_governor_config(write_config(tmp_path, socket_mode="__0660__"))  # unquoted YAML octal
    assert cfg.socket_mode == 0o660
    for text, mode in (("0640", 0o640), ("600", 0o600), ("0o666", 0o666)):
        assert load_governor_config(write_config(tmp_path, socket_mode=text))[0].socket_mode == mode


@pytest.mark.parametrize(("value", "said"), [(660, "octal"), ("0o7777", "octal"), ("rw-rw----", "octal"),
                                            ("0460", "owner without read and write"), (True, "octal")])
def test_bad_socket_mode_names_the_key(tmp_path, value, said):
    path = write_config(tmp_path, socket_mode=value)
    with pytest.raises(ConfigError) as err:
        load_governor_config(path)
    assert str(path) in str(err.value) and "socket_mode" in str(err.value) and said in str(err.value)


def test_socket_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    path = write_config(tmp_path, tmp_path / "file" / "gov.sock")
    res = subprocess.run([*CLI, "run", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"cannot create the socket's folder {tmp_path / 'file'}" in res.stderr.splitlines()[-1]


def test_unknown_socket_group_is_refused_before_the_board_is_touched(tmp_path):
    path = write_config(tmp_path, socket_group="no-such-group-dvfs")
    res = subprocess.run([*CLI, "run", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "socket_group" in res.stderr and "no group 'no-such-group-dvfs'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "saved.json").exists() and not (tmp_path / "gov.sock").exists()


def connect_and_ask_status(path: Path) -> Callable[[], tuple[int, str]]:
    def ask() -> tuple[int, str]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(str(path))
        except PermissionError as exc:
            return 13, f"refused: {exc.strerror}"
        s.sendall(b'{"op": "status"}\n')
        line = s.makefile("rb").readline()
        s.close()
        return (0 if json.loads(line)["ok"] else 1), line.decode()
    return ask


@needs_root
def test_socket_group_lets_its_members_in_and_no_one_else(shared_dir):
    try:
        group = grp.getgrnam("users")
    except KeyError:
        pytest.skip("no 'users' group on this system")
    sock = shared_dir / "run" / "dvfs" / "gov.sock"  # folders the daemon creates, under root's usual umask
    path = write_config(shared_dir, sock, socket_group="users", socket_mode="__0660__")
    proc = subprocess.Popen([*CLI, "run", "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, umask=0o077)
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read())
            if sock.exists() and stat.S_IMODE(sock.stat().st_mode) == 0o660 and sock.stat().st_gid == group.gr_gid:
                break
            time.sleep(0.05)
        st = sock.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == group.gr_gid
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755  # reachable by the group's apps
        code, text = run_as(NOBODY, NOBODY, [group.gr_gid], connect_and_ask_status(sock))
        assert code == 0, text  # a member of the group, not root: served
        code, text = run_as(NOBODY, NOBODY, [], connect_and_ask_status(sock))
        assert code == 13, text  # not a member: the kernel refuses the connection
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert not sock.exists()
