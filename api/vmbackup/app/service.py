"""The use cases of the API put together: who may do what (`access`), backup definitions (`definitions`),
backups and their jobs (`backups`), tasks (`tasks`), over one store, job queue and event bus. The routes,
the scheduler, the metrics and the record commands reach the rules through these, e.g.
`service.backups.create(...)`; this class only builds and holds them.
"""

from __future__ import annotations

from vmbackup.app.access import Access
from vmbackup.app.backups import Backups
from vmbackup.app.definitions import Definitions
from vmbackup.app.queue import JobQueue
from vmbackup.app.sync import IMPORT_LIMIT
from vmbackup.app.tasks import Tasks
from vmbackup.domain.events import Events
from vmbackup.engine.protocol import Engine
from vmbackup.store.store import Store

__all__ = ["Service"]


class Service:
    """The use cases over one store and engine: `access`, `definitions`, `backups`, `tasks`; and the `queue` that
    runs their jobs, the `events` it reports to."""

    def __init__(self, store: Store, runner: Engine, dc_id: int = 1, size_limit: int | None = None,
                 jobs_per_node: int | None = None, batch_runs: int | None = None,
                 sync_import_limit: int = IMPORT_LIMIT):
        self.store = store
        self.events = Events()
        # How many jobs run at once per backup node (None: no limit); the queue keeps the others waiting.
        self.queue = JobQueue(store, runner, jobs_per_node, self.events)
        self.access = Access(store)
        self.tasks = Tasks(store, runner, self.queue, dc_id)
        self.definitions = Definitions(store, self.access)
        self.backups = Backups(store, runner, self.queue, self.access, self.tasks, size_limit=size_limit,
                               batch_runs=batch_runs, sync_import_limit=sync_import_limit)

    def data_version(self) -> int:
        """Changes whenever a record changes (in this process or another): what cached answers key on."""
        return self.store.generation()
