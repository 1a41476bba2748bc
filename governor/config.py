"""The governor's YAML config (``configs/governor/*.yaml``)."""

from __future__ import annotations

import grp
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator, model_validator

from dvfs_schema.loading import ConfigError, load_yaml_model, resolve
from sysfs_backends.registry import BackendSpec

_OCTAL = re.compile(r"^(0o|0)?([0-7]{1,4})$")


def parse_file_mode(value: str | int) -> int:
    """A permission mode written in octal ("0660", "660", "0o660"), or an int YAML already read as
    octal (``0660`` unquoted). Refuses what is not a plain rwx mode, so a decimal slip fails loudly."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an octal mode such as 0660")
    if isinstance(value, int):
        mode = value
    else:
        m = _OCTAL.match(str(value).strip())
        if not m:
            raise ValueError(f"{value!r} is not an octal mode such as 0660 or 0644")
        mode = int(m.group(2), 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not an octal mode such as 0660 or 0644 (at most 0777; "
                         "in YAML write it with a leading 0 or quoted)")
    return mode


class ModelEntry(BaseModel):
    """Where a model's estimator comes from: a file from `dvfs-gov fit`, or (virtual boards only)
    ``simulate: <model config>`` to profile it on the virtual board and fit it at start."""

    model_config = ConfigDict(extra="forbid")
    estimator: str | None = Field(None, description="estimator JSON written by `dvfs-gov fit`")
    simulate: str | None = Field(None, description="model config to profile on the virtual board")

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if (self.estimator is None) == (self.simulate is None):
            raise ValueError("give exactly one of 'estimator' (a file) or 'simulate' (a model config)")
        return self


class GovernorSettings(BaseModel):
    """How decisions are made. Defaults suit a 30-60 fps app on a phone."""

    model_config = ConfigDict(extra="forbid")
    miss_rate_target: float = Field(0.01, gt=0, lt=0.5, description="allowed fraction of late frames")
    margin: float = Field(0.0, ge=0, lt=1, description="extra headroom on top of the learned correction "
                          "(0: the noise margin's fitted tail alone aims at miss_rate_target; 0.01 cost 10-15% "
                          "energy where one more percent of latency means the next GPU step)")
    initial_margin: float | None = Field(None, ge=0, lt=1, description="headroom before min_samples frames are "
                                         "measured; unset: from the spread of the profile's repeats that the "
                                         "estimator keeps (governor.margins.prior_margin), 0.10 where it has none")
    correction_window: int = Field(300, ge=10, description="recent frames the correction learns from")
    min_samples: int = Field(20, ge=1)
    hysteresis: float = Field(0.03, ge=0, lt=1, description="keep the pair in force unless the best saves more")
    shared_hysteresis: float = Field(0.15, ge=0, lt=1, description="the same while another app's frame is in "
                                     "flight: their best pairs differ, and a write per frame costs them round trips")
    lower_dwell_ms: float = Field(25.0, ge=0, description="after a write of ours changed the pair in force, a "
                                  "cheaper pair is taken only once this long has passed while the pair in force "
                                  "still meets the deadline (a raise is never held): with several apps the frames "
                                  "in flight come and go, and the cheapest pair serving them moved down and up "
                                  "with them, a write each time (a change seen at a refresh, such as a cap, "
                                  "starts none); while the apps sharing the GPU need more of it than it has, "
                                  "no cheaper pair is taken at all")
    context_bucket: int = Field(16, ge=1, description="context lengths are rounded up to a multiple of this "
                                "(a grid per bucket; rounding up 64 tokens cost a GPU step at tight deadlines)")
    cap_recheck_s: float = Field(1.0, gt=0, description="pinned limits (min == max) at or under a cap hide it: "
                                 "after this long, ask past it once to see whether it still holds (caps the "
                                 "kernel's limits show are followed at every read-back, with no timer)")
    margin_half_life_frames: float = Field(100.0, ge=5, description="age (frames) at which a residual "
                                           "counts half in the noise margin's tail fit")
    miss_cluster: int = Field(2, ge=1, description="frames over the margin within cluster_window that raise "
                              "it at once (a cluster); its samples fade quickly once it has passed")
    cluster_window: int = Field(10, ge=2, description="recent frames a miss cluster is looked for in")
    actuation_ms: dict[Literal["cpu", "gpu", "mem"], NonNegativeFloat] = Field(
        {}, description="per domain, time (ms) from a write until the new frequency runs; unset: the "
        "board config's actuation_latency_ns (which defaults to the domain's transition latency)")
    state_refresh_s: float = Field(0.5, gt=0, description="how often frequencies in force are re-read")
    frame_timeout_s: float = Field(5.0, gt=0, description="a frame in flight longer than this is dropped")
    # isolation and bounds: what one app or client may cost the others
    max_apps: int = Field(256, ge=1, description="app names remembered at once; apps no client uses are evicted")
    max_apps_per_client: int = Field(8, ge=1, description="distinct app names one connection may use")
    max_frames_per_client: int = Field(16, ge=1, description="frames in flight per connection; the oldest "
                                       "beyond this is dropped")
    outlier_ratio: float = Field(10.0, gt=1, description="a latency over this x max(prediction, deadline) "
                                 "counts as late but is not learned from")
    backend_wait_s: float = Field(0.25, gt=0, description="longest a frame waits for a backend write; a "
                                  "stalled backend (a phone over ADB) gets the answer with a note meanwhile")
    max_clients: int = Field(256, ge=1, description="connections served at once; more are refused")
    client_write_timeout_s: float = Field(10.0, gt=0, description="a client that reads none of its replies "
                                          "for this long is disconnected")
    # idle release: hand the domains back instead of holding the last pair pinned
    idle_policy: Literal["restore", "keep"] = Field(
        "restore", description="restore: put the original settings back while idle; keep: hold the last pair")
    idle_release_s: float = Field(10.0, gt=0, description="release after this long with no frame asked for; "
                                  "also as soon as every client that asked for frames has disconnected")
    # online power learning (governor/power_online.py): where the board has a power rail, correct the
    # energy model's terms (idle, each domain) from what the rail measures
    power_learning: bool = Field(True, description="learn per-domain power scales from the board's rail "
                                 "and minimise the corrected energy; false: the config's tables as they are")
    power_scale_bounds: tuple[float, float] = Field(
        (0.5, 2.0), description="how far a learned scale may move from the config's table (low, high)")

    @field_validator("power_scale_bounds")
    @classmethod
    def _bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"{list(value)}: give [low, high] with 0 < low <= 1 <= high, e.g. [0.5, 2.0]")
        return value


class GovernorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    board: str
    backend: BackendSpec = BackendSpec()
    socket: str = "/tmp/deadline-dvfs.sock"
    socket_mode: int = Field(0o660, description="permissions of the socket (octal): who may connect")
    socket_group: str | None = Field(
        None, description="group given the socket, so apps of its members connect without root")
    models: dict[str, ModelEntry] = Field(min_length=1)
    governor: GovernorSettings = GovernorSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_other_managers: bool = Field(
        False, description="take the board although another frequency manager (tuned, thermald, ...) is active")

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> int:
        if not isinstance(value, str | int):
            raise ValueError(f"{value!r} is not an octal mode such as 0660")
        mode = parse_file_mode(value)
        if mode & 0o600 != 0o600:
            raise ValueError(f"{value!r} leaves the owner without read and write; use e.g. 0660 or 0600")
        return mode

    @field_validator("socket_group")
    @classmethod
    def _group_exists(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                grp.getgrnam(value)
            except KeyError:
                raise ValueError(f"no group {value!r} on this system (create it with `groupadd {value}`, "
                                 "or give an existing group)") from None
        return value

    @model_validator(mode="after")
    def _simulate_needs_virtual(self) -> GovernorConfig:
        sim = [m for m, e in self.models.items() if e.simulate and self.backend.kind != "virtual"]
        if sim:
            raise ValueError(f"models {sim} use 'simulate', which needs backend.kind: virtual")
        return self


def load_governor_config(name_or_path: str | Path) -> tuple[GovernorConfig, Path]:
    """The config and its folder (relative estimator paths are read from there)."""
    path = resolve("governor", name_or_path)
    return load_yaml_model(path, GovernorConfig), path.parent


def estimator_path(config_dir: Path, estimator: str) -> Path:
    """Where a model's ``estimator:`` file is: beside the config, else (relative paths) in the working
    directory, where `dvfs-gov fit -o NAME` writes it when following a bundled config's comment."""
    path = Path(estimator).expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise ConfigError(f"estimator {path}: no such file (write it with `dvfs-gov fit PROFILE -o {path}`)")
        return path
    beside, cwd = config_dir / path, Path.cwd() / path
    for candidate in (beside, cwd):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"estimator {estimator!r}: not found beside the config ({beside}) nor in the working "
                      f"directory ({cwd}); write it with `dvfs-gov fit PROFILE -o {estimator}`")
