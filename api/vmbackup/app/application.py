"""One service instance put together from its Config: what `vmbackup serve` runs and the record commands use."""

from __future__ import annotations

import datetime
import logging
import os
import threading

from prometheus_client import start_http_server

from vmbackup.app.alerts import Alerts, Webhooks
from vmbackup.app.auth import Auth
from vmbackup.app.config import Config
from vmbackup.app.definitions import DEFINITION_FIELDS
from vmbackup.app.discovery import Discovery
from vmbackup.app.metrics import Metrics
from vmbackup.app.scheduler import Scheduler
from vmbackup.app.service import Service
from vmbackup.domain import errors
from vmbackup.domain.clock import iso, now
from vmbackup.domain.facts import TaskStatus
from vmbackup.engine.awx import AwxEngine
from vmbackup.engine.runner import Runner
from vmbackup.store.store import Store

log = logging.getLogger("vmbackup")


class Application:
    """The store, engine, auth, service, scheduler, discovery, metrics and alerts of one service instance, built
    from its Config. Building it starts nothing: no thread runs and no CPU group is made until a job starts
    (`start_background`, or the first run), so the commands that only touch records (`vmbackup user`,
    `definitions`) build it too."""

    def __init__(self, config: Config | None = None):
        self.config = config = config or Config()
        config.check()
        self.data_dir, self.inventory = config.data_dir, config.inventory
        self.store = Store(self.data_dir)
        # Discovery always runs here (it asks the nodes for the service's own records); jobs run on the engine.
        # The runs' CPU group is placed when the first run starts.
        self.local_runner = Runner(os.path.join(self.data_dir, "runs"), self.inventory, nice=config.job_nice,
                                   place_runs=True)
        if config.engine == "awx":
            self.runner = AwxEngine(config.awx_url, config.awx_token, os.path.join(self.data_dir, "runs"),
                                    config.awx_templates, insecure_http=config.awx_insecure_http)
        else:
            self.runner = self.local_runner
        self.auth = Auth(self.store)
        self.service = Service(self.store, self.runner, config)
        self.scheduler = Scheduler(self.service, self.data_dir, interval=config.schedule_interval,
                                   verify_every=config.verify_every)
        self.discovery = Discovery(self.store, self.local_runner, self.inventory, events=self.service.events)
        self.metrics = Metrics(self.service, self.scheduler)
        self.alerts = None
        if config.webhooks:
            self.alerts = Alerts(self.store, Webhooks(list(config.webhooks), config.webhook_secret or b""),
                                 stale_every=config.stale_every)
            self.service.events.subscribe(self.alerts.listen)
        self._stop = threading.Event()

    def sync(self, wait: bool = False, node: str | None = None, timeout: float = 1800, adopt: bool = False) -> dict:
        """Start a sync with the backup nodes (unless one is running); with `wait`, its finished task."""
        running = [t for t in self.store.pending_tasks() if t.get("kind") == "sync"]
        task_id = running[0]["task_id"] if running else self.service.backups.sync(None, node, adopt=adopt)
        if not wait:
            return self.store.get_task(task_id)
        task = self.service.tasks.wait(task_id, timeout=timeout, poll=0.3)
        if task["status"] == TaskStatus.PENDING:
            raise RuntimeError("sync %s did not end within %d s" % (task_id, timeout))
        return task

    def export_definitions(self) -> dict:
        """Every backup definition, as a new controller can import it."""
        keep = list(DEFINITION_FIELDS)
        return {"vmbackup_definitions": 1, "exported": iso(now()),
                "definitions": [{k: d.get(k) for k in keep} for d in self.store.definitions()]}

    def import_definitions(self, data: dict, replace: bool = False) -> dict:
        """Create the definitions of an export, checked as a POST would be; report what was refused."""
        if not isinstance(data, dict) or data.get("vmbackup_definitions") != 1 or \
                not isinstance(data.get("definitions"), list):
            raise RuntimeError("not a vmbackup definitions export (want {\"vmbackup_definitions\": 1, ...})")
        admin = {"id": 0, "username": "import", "is_admin": True, "vms": []}
        report = {"imported": [], "replaced": [], "refused": []}
        for definition in data["definitions"]:
            if not isinstance(definition, dict):
                report["refused"].append({"definition": None, "why": "not an object"})
                continue
            label = "%s/%s disk %s" % (definition.get("hostname"), definition.get("name"), definition.get("disk_id"))
            fields = {k: v for k, v in definition.items() if k in DEFINITION_FIELDS and k not in
                      ("hostname", "vm_uuid", "name") and v is not None}
            vm_key = definition.get("vm_uuid") or definition.get("hostname") or ""
            try:
                vm = self.service.access.vm_for(admin, str(vm_key))
                existing = self.store.get_definition(vm["uuid"], int(fields.get("disk_id", 1)), str(definition["name"]))
                if existing is not None and not replace:
                    raise errors.NotAcceptable(errors.DEFINITION_EXISTS)
                if existing is not None:
                    self.service.definitions.update(admin, vm["uuid"], str(definition["name"]),
                                                    {k: v for k, v in fields.items() if k != "type"})
                    report["replaced"].append(label)
                else:
                    self.service.definitions.create(admin, vm["uuid"], str(definition.get("name")), fields)
                    report["imported"].append(label)
            except errors.ApiError as err:
                report["refused"].append({"definition": label, "why": err.detail})
            except errors.ValidationFailed as err:
                report["refused"].append({"definition": label, "why": err.errors})
            except (KeyError, TypeError, ValueError) as err:
                report["refused"].append({"definition": label, "why": "malformed: %s" % err})
        return report

    def purge_runs(self) -> list[str]:
        """Remove the folders of runs finished more than `run_retention` ago (their tasks stay recorded)."""
        pending = {t["task_id"] for t in self.store.pending_tasks()}
        removed = self.runner.purge(self.config.run_retention, keep=lambda ident: ident in pending)
        if removed:
            log.info("removed %d finished run folder(s) older than %d days", len(removed),
                     self.config.run_retention // 86400)
        return removed

    def purge_tasks(self) -> int:
        """Drop the task records (and log lines) of the days older than `task_retention`: a busy service writes
        thousands a day, and every listing and the metrics would grow with them. Failure counts stay."""
        dropped = self.store.purge_tasks(now() - datetime.timedelta(seconds=self.config.task_retention))
        if dropped:
            log.info("purged %d task record(s) older than %g days", dropped, self.config.task_retention / 86400)
        return dropped

    def discover(self) -> dict:
        summary = self.discovery.run()
        for node, operational in summary["nodes"].items():
            log.info("node %s: %s", node, "operational" if operational else "NOT operational")
        log.info("%d VMs discovered", summary["vms"])
        return summary

    def start_background(self) -> None:
        """The service's background work, as its Config says: recovery of jobs left running, the scheduler, the
        housekeeping, the store's checkpoints, discovery and sync."""
        discover_every, schedule = self.config.discover_every, self.config.schedule
        if self.alerts is not None:
            self.alerts.start()  # before recovery: jobs that ended while we were down alert too
        recovered = self.service.tasks.recover()
        if recovered:
            log.info("following %d job(s) left by an earlier run", recovered)
        if schedule:
            self.scheduler.start()
        threading.Thread(target=self._housekeeping, daemon=True, name="housekeeping").start()
        self.store.start_checkpoints(self.config.checkpoint_every, self._stop)
        if discover_every is None:
            return

        def loop():
            while not self._stop.is_set():
                try:
                    self.discover()
                    self.sync()  # then the backups: the nodes hold the truth
                except Exception as err:  # a broken node must not stop the service
                    log.error("discovery or sync failed: %s", err)
                self._stop.wait(discover_every)

        threading.Thread(target=loop, daemon=True, name="discovery").start()

    def _housekeeping(self, every: float = 3600.0) -> None:
        while not self._stop.is_set():
            try:
                self.purge_runs()
                self.purge_tasks()
            except Exception:  # housekeeping must not stop the service
                log.exception("purging finished runs or old tasks failed")
            self._stop.wait(every)

    def stop(self) -> None:
        self._stop.set()
        self.scheduler.stop()
        if self.alerts is not None:
            self.alerts.stop()
        self.store.checkpoint()  # leave whole files (the journal would be replayed at the next start anyway)

    def serve_metrics(self, listen: str) -> None:
        """Metrics without authentication on a listen address of their own, for a scraper (all series)."""
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.metrics.registry(None))
        log.info("metrics for Prometheus on http://%s:%s/metrics (no authentication)", host or "127.0.0.1", port)
