"""Restore on the way out: normal stop, exceptions, SIGTERM and SIGINT.

SIGKILL and power loss cannot be caught; for those the state file written by ``save()`` is what
``dvfs-gov restore`` (or the next start) uses.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sysfs_backends.base import Backend

log = logging.getLogger(__name__)


class Stopped(SystemExit):
    """Raised in the main thread when SIGTERM/SIGINT arrives, so ``finally`` blocks run."""


_held = 0  # depth of ``signals_held`` blocks in the main thread
_restoring = False  # the restore is under way: no signal may cut it short
_pending: int | None = None  # a signal that arrived inside a held block, raised when it ends


def _raise_stop(signum: int, _frame) -> None:
    global _pending
    if _restoring:
        os.write(2, b"putting the original settings back first\n")
        _pending = _pending or signum
        return
    if _held and _pending is None:
        _pending = signum
        os.write(2, b"stopping once the board has answered the command under way "
                    b"(again to stop at once)\n")
        return
    _pending = None
    raise Stopped(128 + signum)


@contextmanager
def signals_held() -> Iterator[None]:
    """Let a command to the board finish before SIGINT/SIGTERM stops us (main thread only).

    A command cut off on our side may still run on the other side (adbd has the script, the
    phone's shell runs it): our bookkeeping would miss its writes, and they could even land after
    the restore. The stop waits for the answer (at most the transport's timeout); a second signal
    stops at once."""
    global _held, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and not _restoring and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(128 + signum)


@contextmanager
def restoring(backend: Backend, handle_signals: bool = True) -> Iterator[Backend]:
    """Save before use and restore when the block ends, however it ends."""
    previous = {}
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _raise_stop)
    try:
        try:
            for line in backend.recover_crashed():
                log.warning("restored settings left by a killed run: %s", line)
            backend.save()
        except BaseException:  # not the owner, or nothing saved: nothing of ours to put back
            backend.close()
            raise
        try:
            yield backend
        finally:
            _restore_shielded(backend)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _restore_shielded(backend: Backend) -> None:
    """Restore and close; a SIGINT/SIGTERM meanwhile (a second Ctrl-C) waits until it is done,
    since cutting the restore short is what would leave the board pinned."""
    global _restoring, _pending
    main = threading.current_thread() is threading.main_thread()
    if main:
        _restoring = True
    try:
        for line in backend.restore():
            log.info("restored %s", line)
    finally:
        try:
            backend.close()
        finally:
            if main:
                _restoring = False
                _pending = None  # the stop it asked for is under way
