from __future__ import annotations

import copy

import pytest


def gpu(name, cs, ce, gs, ge):
    return {"name": name, "kind": "gpu", "cpu_start_ns": cs, "cpu_end_ns": ce,
            "gpu_start_ns": gs, "gpu_end_ns": ge}


def cpu(name, cs, ce):
    return {"name": name, "kind": "cpu", "cpu_start_ns": cs, "cpu_end_ns": ce}


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory, monkeypatch):
    """Per-board ownership locks go to $XDG_STATE_HOME: never the user's during tests."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))


@pytest.fixture
def valid_profile() -> dict:
    """The example of docs/profile-format.md, with two runs."""
    run = {
        "cpu_khz": 2400000, "gpu_hz": 625000000, "context_len": None, "latency_ns": 1_000_000,
        "layers": [gpu("conv_1", 0, 21000, 30000, 240000),
                   gpu("conv_2", 21000, 40000, 240000, 400000),
                   cpu("nms", 410000, 900000)],
    }
    slow = copy.deepcopy(run)
    slow["cpu_khz"] = 652800
    return {
        "format": "deadline-dvfs.profile/1", "model": "yolo_v2_tiny", "device": "pixel5",
        "frequencies": {"cpu_khz": [652800, 1363200, 2400000],
                        "gpu_hz": [250000000, 450000000, 625000000]},
        "runs": [run, slow],
    }


@pytest.fixture(params=["hook", "mount"])
def drive(request, tmp_path):
    """How a test's backend reaches a virtual board: the in-process hook, or the Linux backend, with
    no hook, on the board's kernel mounted as a file system (FUSE), as on a real board. The mount
    variant is skipped, with the reason, where FUSE is unavailable."""
    from contextlib import ExitStack

    from sysfs_backends.linux import LinuxBackend

    stack = ExitStack()

    def backend(vb, state_file):
        if request.param == "hook":
            return vb.backend(state_file=state_file)
        from sysfs_backends.virtual.fuse_mount import fuse_unavailable, mounted

        reason = fuse_unavailable()
        if reason:
            pytest.skip(reason)
        mountpoint = stack.enter_context(mounted(vb.root, tmp_path / f"mnt-{vb.root.name}"))
        return LinuxBackend(vb.board, mountpoint, state_file=state_file)

    yield backend
    stack.close()
