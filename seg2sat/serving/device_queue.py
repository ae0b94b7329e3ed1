"""A first-come, first-served queue in front of the device: at most N generations at once.

Several app sessions (threads of one Streamlit server) share one pipeline. The weights are
shared read-only; each call has its own scheduler and buffers (`seg2sat.generation.tiling`), so running
calls side by side is correct, but every running call holds its activations in device memory.
`DeviceQueue(slots)` bounds that: a call takes a slot or waits its turn, and while it waits it
is told its position and an estimate from the last calls' durations. Everything that does not
touch the model (upload checks, hint colouring, PNG/GeoTIFF encoding) stays outside the slot.

A waiter that gives up (Streamlit stops a script run when its user presses another button)
leaves the line: the exception raised in its `on_wait` callback removes its ticket.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueStatus:
    """What a waiting caller is told."""

    position: int  # 1 = next to run
    running: int
    eta_s: float | None  # None until a call has finished


class DeviceQueue:
    """At most `slots` holders at once; waiters served in arrival order."""

    def __init__(self, slots: int = 1, history: int = 20) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self._cond = threading.Condition()
        self._waiting: list[int] = []
        self._running = 0
        self._tickets = itertools.count()
        self._durations: deque[float] = deque(maxlen=history)

    def status(self, ticket: int | None = None) -> QueueStatus:
        """Position of `ticket` (or of a newcomer), calls running, estimated wait."""
        with self._cond:
            ahead = self._waiting.index(ticket) if ticket in self._waiting else len(self._waiting)
            return QueueStatus(ahead + 1, self._running, self._eta(ahead))

    def _eta(self, ahead: int) -> float | None:
        if not self._durations:
            return None
        # Everyone ahead, and the calls running now, go through `slots` lanes.
        rounds = (ahead + self._running) / self.slots
        return round(rounds * statistics.median(self._durations), 1)

    @contextlib.contextmanager
    def slot(self, on_wait: Callable[[QueueStatus], None] | None = None,
             poll_s: float = 0.5) -> Iterator[float]:
        """Hold a slot for the `with` body; yields the seconds waited.

        `on_wait(status)` is called (outside the lock) when the caller has to wait, then every
        `poll_s` while it still waits; an exception from it abandons the place in line.
        """
        t0 = time.perf_counter()
        with self._cond:
            ticket = next(self._tickets)
            self._waiting.append(ticket)
        try:
            while True:
                with self._cond:
                    ahead = self._waiting.index(ticket)
                    if self._running < self.slots and ahead < self.slots - self._running:
                        self._waiting.remove(ticket)
                        self._running += 1
                        break
                    status = QueueStatus(ahead + 1, self._running, self._eta(ahead))
                if on_wait is not None:
                    on_wait(status)
                with self._cond:
                    self._cond.wait(timeout=poll_s)
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()
            raise
        waited = time.perf_counter() - t0
        started = time.perf_counter()
        try:
            yield waited
        finally:
            with self._cond:
                self._running -= 1
                self._durations.append(time.perf_counter() - started)
                self._cond.notify_all()
