"""What happened, for whoever listens (alerts, metrics): a failed job, a backup turning LOST, a failed
drill, a definition going stale. Listeners are called in the emitting thread and must not raise."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("vmbackup.events")
Listener = Callable[[str, dict], None]


class Events:
    """A list of listeners, each called with (kind, data) for every event."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, kind: str, **data) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, data)
            except Exception:  # a broken listener must not break the job that emitted
                log.exception("listener %r failed on %s", listener, kind)
