"""Reading and writing the JSON documents the estimator works with (profiles, estimator files).

Kept out of ``estimator/`` so that package stays pure computation.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from estimator.model import Estimator
from estimator.profile import Profile, ProfileError, parse_profile


def _read_text(path: Path, error: type[ValueError]) -> str:
    """The text of ``path``; missing, a directory, unreadable or not UTF-8 raise ``error`` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a text file (byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                    f"{exc.start} is not UTF-8)") from None


def _read_json(path: Path, error: type[ValueError], text: str | None = None) -> object:
    """The JSON in ``path``; every way it can fail raises ``error`` with a message naming the file."""
    text = _read_text(path, error) if text is None else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise error(f"{path}: not usable JSON: nested too deeply") from None


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    data = _read_json(path, ProfileError)
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a JSON object")
    return parse_profile(data, str(path))


def load_estimator(path: str | Path) -> Estimator:
    path = Path(path)
    text = _read_text(path, ValueError)
    if not isinstance(_read_json(path, ValueError, text), dict):
        raise ValueError(f"{path}: not a deadline-dvfs estimator file (a JSON object is expected)")
    try:
        return Estimator.from_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(x) for x in first["loc"])
        more = f" and {len(exc.errors()) - 1} more" if len(exc.errors()) > 1 else ""
        raise ValueError(
            f"{path}: not a deadline-dvfs estimator file (key '{key}': {first['msg']}{more})"
        ) from None
    except ValueError as exc:  # parsed, but the numbers or shapes are unusable
        raise ValueError(f"{path}: unusable estimator: {exc}") from None


def write_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file.

    ``mode`` defaults to 0644, not the temporary file's 0600: a profile written under sudo must stay
    readable by the user who fits it. Errors name ``path`` (an OSError with it as the filename).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name to write", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OSError(exc.errno, f"cannot create its folder: {exc.filename} is not a folder", str(path)) from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create its folder {path.parent}: {exc.strerror}", str(path)) from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write in {path.parent}: {exc.strerror}", str(path)) from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
