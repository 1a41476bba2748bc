"""Choosing a backend by name: the built-in ones, plus any a third party registers.

A third-party package registers a backend with an entry point in the group
``deadline_dvfs.backends``; the object it names is called as ``factory(board, spec)`` and must
return a ``sysfs_backends.base.Backend``::

    [project.entry-points."deadline_dvfs.backends"]
    mybackend = "my_package.backend:make_backend"
"""

from __future__ import annotations

import os
import stat
import tempfile
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dvfs_schema.board import BoardConfig
from sysfs_backends.base import Backend

ENTRY_POINT_GROUP = "deadline_dvfs.backends"


class AdbOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="host:port for ADB over TCP")
    serial: str | None = Field(None, description="USB serial (needs adb-shell[usb])")
    key_path: str | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(10.0, gt=0)


class BackendSpec(BaseModel):
    """Which backend drives the board, and where."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field("virtual", description="linux, virtual, android, or a registered name")
    sysfs_root: str = "/"
    virtual_root: str | None = None
    state_file: str | None = None
    adb: AdbOptions = AdbOptions()


BUILTIN: tuple[Literal["linux", "virtual", "android"], ...] = ("linux", "virtual", "android")


def available_backends() -> list[str]:
    return [*BUILTIN, *sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))]


def default_virtual_root(board: str) -> Path:
    """In memory where possible (/dev/shm), like the real sysfs."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    root = base / f"deadline-dvfs-virtual-{board}"
    # a shared, world-writable place: a tree someone else made (or a symlink planted there) would
    # have us write where they choose, or run on a "kernel" state they control
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return root
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(f"{root}: the default virtual board tree is not a directory of ours (a symlink, "
                              "a file, or another user's); give --virtual-root (backend.virtual_root) instead")
    return root


def open_backend(board: BoardConfig, spec: BackendSpec) -> Backend:
    if spec.kind == "linux":
        from sysfs_backends.linux import LinuxBackend

        return LinuxBackend(board, spec.sysfs_root, spec.state_file)
    if spec.kind == "virtual":
        from sysfs_backends.virtual.board import VirtualBoard

        root = Path(spec.virtual_root) if spec.virtual_root else default_virtual_root(board.name)
        return VirtualBoard(root, board).backend(spec.state_file)
    if spec.kind == "android":
        from sysfs_backends.android import AndroidBackend

        return AndroidBackend(board, spec.adb, spec.state_file)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec.kind:
            backend = ep.load()(board, spec)
            if not isinstance(backend, Backend):
                raise TypeError(f"backend {spec.kind!r} ({ep.value}) did not return a Backend")
            return backend
    raise ValueError(f"unknown backend {spec.kind!r}; allowed: {', '.join(available_backends())}")
