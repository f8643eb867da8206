"""SIGTERM as a polite interrupt: finish the current step, then stop like Ctrl-C.

A cluster scheduler sends SIGTERM before killing a job. The handler only sets a
flag; the training loop calls ``check()`` between steps and raises
``Terminated`` (a KeyboardInterrupt) there, so no write is cut in half and the
last end-of-epoch checkpoint stays the resume point.

Example::

    with sigterm_as_interrupt() as stop:
        for batch in loader:
            step(batch)
            stop.check()
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised at a safe point after SIGTERM; the CLI treats it like Ctrl-C (exit 130)."""


class StopFlag:
    def __init__(self):
        self.requested = False

    def check(self) -> None:
        if self.requested:
            raise Terminated("SIGTERM received: stopped after the current step")


@contextmanager
def sigterm_as_interrupt():
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread only
        yield flag
        return

    def handler(signum, frame):
        flag.requested = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
