"""Putting a governor together from its config: board, backend, estimators."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dvfs_schema.board import BoardConfig
from dvfs_schema.loading import load_board, load_model_spec
from estimator.model import Estimator
from estimator.planner import plan_grid
from estimator.profile import parse_profile
from governor.config import GovernorConfig, estimator_path
from governor.core import Governor
from governor.storage import load_estimator
from sysfs_backends.registry import open_backend
from sysfs_backends.virtual.simulator import Simulator

log = logging.getLogger(__name__)


def fit_on_virtual_board(board: BoardConfig, model: str, seed: int = 0, repeats: int = 3) -> Estimator:
    """Profile a model on the virtual board (the planned points x ``repeats``) and fit it."""
    spec = load_model_spec(model)
    sim = Simulator(board, spec)
    pairs = plan_grid(list(board.domain_tables.values()))
    profile = sim.profile(pairs, repeats, spec.profile_context_len or None, np.random.default_rng(seed))
    return Estimator.fit(parse_profile(profile))


def build_governor(config: GovernorConfig, config_dir: Path) -> Governor:
    board = load_board(config.board)
    backend = open_backend(board, config.backend)
    claim = getattr(backend, "claim", None)
    if claim is not None:  # one owner per board: refuse now, before anything touches it
        claim()
    try:
        if not config.allow_other_managers:
            from governor.managers import OtherManagersActive, certain, find_other_managers, refusal

            found = certain(find_other_managers(backend), f"board {board.name!r}")
            if found:
                raise OtherManagersActive(refusal(found, f"board {board.name!r}"))
        models: dict[str, Estimator] = {}
        for name, entry in config.models.items():
            if entry.estimator is not None:
                models[name] = load_estimator(estimator_path(config_dir, entry.estimator))
            else:
                log.info("profiling %s on the virtual %s", entry.simulate, board.name)
                models[name] = fit_on_virtual_board(board, entry.simulate)
        return Governor(backend, board, models, config.governor)
    except BaseException:
        backend.close()  # gives the board back
        raise
