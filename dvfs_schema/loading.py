"""Finding and loading YAML configs (boards, models, governor) with errors a person can act on.

A name (``sd888_phone``) is looked up in ``./configs/<kind>/`` first, then in the configs bundled
with the package; a path is used as is. Every validation error names the file, the key and, where
the schema has a fixed set, the allowed values.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dvfs_schema.board import BoardConfig
from dvfs_schema.workload import ModelSpec

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names file, key and what is allowed."""


def _bundled_dir(kind: str) -> Path | None:
    try:
        return Path(str(resources.files("dvfs_configs"))) / kind
    except ModuleNotFoundError:  # running from a checkout that was not pip-installed
        return None


def config_dirs(kind: str) -> list[Path]:
    return [d for d in (Path.cwd() / "configs" / kind, _bundled_dir(kind)) if d is not None]


def available(kind: str) -> dict[str, Path]:
    """Config name -> file, local ``configs/`` shadowing the bundled ones."""
    found: dict[str, Path] = {}
    for folder in reversed(config_dirs(kind)):
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found[path.stem] = path
    return dict(sorted(found.items()))


def resolve(kind: str, name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: {'a directory, not a config file' if path.is_dir() else 'no such file'}")
        return path
    known = available(kind)
    if str(name_or_path) not in known:
        raise ConfigError(
            f"unknown {kind[:-1]} {str(name_or_path)!r}; allowed: {', '.join(known) or '(none)'}"
        )
    return known[str(name_or_path)]


def _describe(err: dict) -> str:
    key = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    got_text = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"key '{key}': {msg}{got_text}"


def load_yaml_model(path: Path, model: type[M]) -> M:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (offset {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def load_board(name_or_path: str | Path) -> BoardConfig:
    return load_yaml_model(resolve("boards", name_or_path), BoardConfig)


def load_model_spec(name_or_path: str | Path) -> ModelSpec:
    """A model by name, YAML path, or ONNX file (read through its graph, see dvfs_schema.onnx_model)."""
    if str(name_or_path).lower().endswith(".onnx"):
        from dvfs_schema.onnx_model import OnnxModelError, load_onnx

        try:
            return load_onnx(name_or_path).spec
        except OnnxModelError as exc:
            raise ConfigError(str(exc)) from None
    return load_yaml_model(resolve("models", name_or_path), ModelSpec)
