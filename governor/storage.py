"""Reading and writing the JSON documents the estimator works with (profiles, estimator files).

Kept out of ``estimator/`` so that package stays pure computation.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from estimator.model import Estimator
from estimator.profile import Profile, ProfileError, parse_profile


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a JSON object")
    return parse_profile(data, str(path))


def load_estimator(path: str | Path) -> Estimator:
    path = Path(path)
    try:
        return Estimator.from_json(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(x) for x in first["loc"])
        raise ValueError(
            f"{path}: not a deadline-dvfs estimator file (key '{key}': {first['msg']})"
        ) from None
    except ValueError as exc:  # parsed, but the numbers or shapes are unusable
        raise ValueError(f"{path}: unusable estimator: {exc}") from None


def write_atomic(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
