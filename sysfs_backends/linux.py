"""Local Linux backend: cpufreq/devfreq files of this machine, or of any tree laid out like /sys."""

from __future__ import annotations

from pathlib import Path

from dvfs_schema.board import BoardConfig
from sysfs_backends.sysfs import SysfsBackend, board_lock_path, saved_state_path
from sysfs_backends.transport import LocalTransport, WriteHook


class LinuxBackend(SysfsBackend):
    name = "linux"

    def __init__(
        self,
        board: BoardConfig,
        sysfs_root: str | Path = "/",
        state_file: str | Path | None = None,
        hook: WriteHook | None = None,
    ) -> None:
        super().__init__(
            board,
            LocalTransport(sysfs_root, hook),
            state_file or saved_state_path(board.name, sysfs_root),
            board_lock_path(sysfs_root),
        )
        self.sysfs_root = Path(sysfs_root)
        self.target = f"sysfs tree {self.sysfs_root.resolve()}"
