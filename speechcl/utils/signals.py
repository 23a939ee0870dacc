"""Preemption: SIGTERM (what clusters send before they take a machine back) and SIGINT (Ctrl-C) turn into a
flag that long jobs check at safe points, so they save a resumable state and exit instead of dying
mid-write.

A job wraps its main loop in :func:`preemptible`, calls :meth:`Preemption.requested` between units of work
(an update, a file) and, when it is set, saves what it has and raises :class:`Preempted`; the CLI turns
that into exit status :data:`EXIT_PREEMPTED`. A second signal while the job is saving is ignored until the
save is done; only SIGKILL stops a job at once (and atomic writes keep its outputs whole even then).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_PREEMPTED = 75
"""Exit status of a job stopped by SIGTERM/SIGINT after saving a resumable state (``EX_TEMPFAIL``: run the
same command again to continue)."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(RuntimeError):
    """A job stopped by a signal after saving its state; rerunning the same command resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class Preemption:
    """The flag a signal sets; ``signum`` is the first signal received (0: none)."""

    def __init__(self) -> None:
        self.signum = 0

    def requested(self) -> bool:
        return self.signum != 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.signum:
            self.signum = signum


@contextmanager
def preemptible() -> Iterator[Preemption]:
    """Within the block, SIGTERM and SIGINT set the returned flag instead of ending the process.

    Outside the main thread (where Python cannot install handlers) the flag never sets. The previous
    handlers come back when the block ends.
    """
    flag = Preemption()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, flag._handle)
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
