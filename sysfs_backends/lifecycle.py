"""Restore on the way out: normal stop, exceptions, SIGTERM and SIGINT.

SIGKILL and power loss cannot be caught; for those the state file written by ``save()`` is what
``dvfs-gov restore`` (or the next start) uses.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from sysfs_backends.base import Backend

log = logging.getLogger(__name__)


class Stopped(SystemExit):
    """Raised in the main thread when SIGTERM/SIGINT arrives, so ``finally`` blocks run."""


def _raise_stop(signum: int, _frame) -> None:
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
            try:
                for line in backend.restore():
                    log.info("restored %s", line)
            finally:
                backend.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
