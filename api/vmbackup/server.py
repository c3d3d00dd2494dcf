"""Putting the service together and serving it with waitress (threads), not Bottle's test server."""

from __future__ import annotations

import logging
import os
import threading

from vmbackup import paths
from vmbackup.auth import Auth
from vmbackup.discovery import Discovery
from vmbackup.routes import build_app, es_header_names
from vmbackup.runner import Runner
from vmbackup.scheduler import Scheduler
from vmbackup.service import Service
from vmbackup.store import Store

log = logging.getLogger("vmbackup")
DEFAULT_DATA_DIR = os.environ.get("VMBACKUP_DATA_DIR", "/var/lib/vmbackup")
DEFAULT_INVENTORY = os.environ.get("VMBACKUP_INVENTORY", os.path.join(paths.INVENTORY, "lab", "hosts.yml"))


class Application:
    """The store, runner, auth, service and discovery of one service instance."""

    def __init__(self, data_dir: str = DEFAULT_DATA_DIR, inventory: str = DEFAULT_INVENTORY,
                 size_limit: int | None = None, jobs_per_node: int | None = None):
        self.data_dir = os.path.abspath(data_dir)
        self.inventory = os.path.abspath(inventory)
        self.store = Store(self.data_dir)
        self.runner = Runner(os.path.join(self.data_dir, "runs"), self.inventory)
        self.auth = Auth(self.store)
        self.service = Service(self.store, self.runner, size_limit=size_limit, jobs_per_node=jobs_per_node)
        self.scheduler = Scheduler(self.service, self.data_dir)
        self.discovery = Discovery(self.store, self.runner, self.inventory)
        self._stop = threading.Event()

    def wsgi(self):
        return es_header_names(build_app(self.service, self.auth))

    def discover(self) -> dict:
        summary = self.discovery.run()
        for node, operational in summary["nodes"].items():
            log.info("node %s: %s", node, "operational" if operational else "NOT operational")
        log.info("%d VMs discovered", summary["vms"])
        return summary

    def start_background(self, discover_every: float | None, schedule: bool = True) -> None:
        recovered = self.service.recover()
        if recovered:
            log.info("following %d job(s) left by an earlier run", recovered)
        if schedule:
            self.scheduler.start()
        if discover_every is None:
            return

        def loop():
            while not self._stop.is_set():
                try:
                    self.discover()
                except Exception as err:  # a broken node must not stop the service
                    log.error("discovery failed: %s", err)
                self._stop.wait(discover_every)

        threading.Thread(target=loop, daemon=True, name="discovery").start()

    def stop(self) -> None:
        self._stop.set()
        self.scheduler.stop()


def serve(listen: str, data_dir: str, inventory: str, discover_every: float | None = 600.0,
          threads: int = 8, size_limit: int | None = None, schedule: bool = True,
          jobs_per_node: int | None = None, schedule_interval: float = 5.0) -> None:
    import waitress

    host, _, port = listen.rpartition(":")
    app = Application(data_dir, inventory, size_limit, jobs_per_node)
    app.scheduler.interval = schedule_interval
    app.start_background(discover_every, schedule)
    log.info("vmbackup API on http://%s:%s/api/ (data in %s)", host or "127.0.0.1", port, app.data_dir)
    waitress.serve(app.wsgi(), host=host or "127.0.0.1", port=int(port), threads=threads, ident="vmbackup")
