"""The use cases of the API put together: who may do what (`access`), backup definitions (`definitions`),
backups and their jobs (`backups`), tasks (`tasks`), over one store, job queue and event bus. The routes,
the scheduler, the metrics and the record commands reach the rules through these, e.g.
`service.backups.create(...)`; this class only builds and holds them.
"""

from __future__ import annotations

from vmbackup.app.access import Access
from vmbackup.app.backups import Backups
from vmbackup.app.config import Config
from vmbackup.app.definitions import Definitions
from vmbackup.app.queue import JobQueue
from vmbackup.app.tasks import Tasks
from vmbackup.domain.events import Events
from vmbackup.engine.protocol import Engine
from vmbackup.store.store import Store

__all__ = ["Service"]


class Service:
    """The use cases over one store and engine: `access`, `definitions`, `backups`, `tasks`; and the `queue` that
    runs their jobs, the `events` it reports to."""

    def __init__(self, store: Store, runner: Engine, config: Config | None = None):
        """`config`: the settings the use cases read (jobs per node, size limit, batch runs, sync's import
        limit), with Config's defaults when None."""
        config = config or Config()
        self.store = store
        self.events = Events()
        # How many jobs run at once per backup node (None: no limit); the queue keeps the others waiting.
        self.queue = JobQueue(store, runner, config.jobs_per_node, self.events)
        self.access = Access(store)
        self.tasks = Tasks(store, runner, self.queue)
        self.definitions = Definitions(store, self.access)
        self.backups = Backups(store, runner, self.queue, self.access, self.tasks, config)

    def data_version(self) -> int:
        """Changes whenever a record changes (in this process or another): what cached answers key on."""
        return self.store.generation()
