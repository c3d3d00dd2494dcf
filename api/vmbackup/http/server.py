"""Putting the service together and serving it with waitress (threads), not Bottle's test server."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import threading
import time

from vmbackup.app.alerts import Alerts, Webhooks
from vmbackup.app.auth import Auth
from vmbackup.app.discovery import Discovery
from vmbackup.app.metrics import Metrics
from vmbackup.app.scheduler import Scheduler
from vmbackup.app.service import DEFINITION_FIELDS, Service
from vmbackup.app.sync import IMPORT_LIMIT
from vmbackup.domain import errors, paths
from vmbackup.domain.clock import iso, now
from vmbackup.engine import cpugroup
from vmbackup.engine.awx import AwxEngine
from vmbackup.engine.runner import Runner
from vmbackup.http.routes import build_app, es_header_names, utf8_only, wait_for
from vmbackup.store.store import Store

log = logging.getLogger("vmbackup")
DEFAULT_DATA_DIR = os.environ.get("VMBACKUP_DATA_DIR", "/var/lib/vmbackup")
DEFAULT_INVENTORY = os.environ.get("VMBACKUP_INVENTORY", os.path.join(paths.INVENTORY, "lab", "hosts.yml"))


DEFAULT_BODY_LIMIT = 1 << 20          # bytes of a request body
CHECKPOINT_EVERY = 2.0                 # seconds between folding the store's journal into its files
DEFAULT_RUN_RETENTION = 30 * 86400    # seconds a finished run's folder (artifacts, log) is kept
DEFAULT_TASK_RETENTION = 90 * 86400   # seconds an ended task's record and log line are kept (counts stay)
DEFAULT_STREAM_LIMIT = 3600.0         # seconds an ES-STREAM answer waits for its job at most
DEFAULT_VERIFY_EVERY = 7 * 86400.0    # seconds between restore drills of each definition's newest backup
DEFAULT_STALE_EVERY = 300.0           # seconds between checks for definitions gone stale (webhooks)
DEFAULT_JOB_NICE = 10                 # niceness of the local playbook runs (0: the service's own)


class Application:
    """The store, runner, auth, service and discovery of one service instance."""

    def __init__(self, data_dir: str = DEFAULT_DATA_DIR, inventory: str = DEFAULT_INVENTORY,
                 size_limit: int | None = None, jobs_per_node: int | None = None,
                 body_limit: int = DEFAULT_BODY_LIMIT, run_retention: float = DEFAULT_RUN_RETENTION,
                 stream_limit: float = DEFAULT_STREAM_LIMIT, verify_every: float = DEFAULT_VERIFY_EVERY,
                 engine: str = "local", awx_url: str | None = None, awx_token: str | None = None,
                 awx_templates: dict | None = None, awx_insecure_http: bool = False,
                 webhooks: list[str] | None = None,
                 webhook_secret: bytes | None = None, stale_every: float = DEFAULT_STALE_EVERY,
                 job_nice: int = DEFAULT_JOB_NICE, batch_runs: int | None = None,
                 sync_import_limit: int = IMPORT_LIMIT, trusted_proxies: list[str] | None = None,
                 task_retention: float = DEFAULT_TASK_RETENTION):
        self.data_dir = os.path.abspath(data_dir)
        self.trusted_proxies = frozenset(trusted_proxies or ())
        self.body_limit = body_limit
        self.run_retention = run_retention
        self.task_retention = task_retention
        self.stream_limit = stream_limit
        self.inventory = os.path.abspath(inventory)
        self.store = Store(self.data_dir)
        # Discovery always runs here (it asks the nodes for the service's own records); jobs run on the engine.
        placement = cpugroup.for_runs(job_nice)
        (log.info if placement.below else log.warning)("%s", placement.reason)
        self.local_runner = Runner(os.path.join(self.data_dir, "runs"), self.inventory, nice=job_nice,
                                   cpu_group=placement.procs)
        if engine == "awx":
            if not awx_url or not awx_token:
                raise RuntimeError("--engine awx needs --awx-url and a token (--awx-token-file or VMBACKUP_AWX_TOKEN)")
            self.runner = AwxEngine(awx_url, awx_token, os.path.join(self.data_dir, "runs"), awx_templates,
                                    insecure_http=awx_insecure_http)
        elif engine == "local":
            self.runner = self.local_runner
        else:
            raise RuntimeError("--engine: local or awx, not %r" % engine)
        self.auth = Auth(self.store)
        self.service = Service(self.store, self.runner, size_limit=size_limit, jobs_per_node=jobs_per_node,
                               batch_runs=batch_runs, sync_import_limit=sync_import_limit)
        self.scheduler = Scheduler(self.service, self.data_dir, verify_every=verify_every)
        self.discovery = Discovery(self.store, self.local_runner, self.inventory, events=self.service.events)
        self.metrics = Metrics(self.service, self.scheduler)
        self.alerts = None
        if webhooks:
            self.alerts = Alerts(self.store, Webhooks(webhooks, webhook_secret or b""), stale_every=stale_every)
            self.service.events.subscribe(self.alerts.listen)
        self._stop = threading.Event()

    def wsgi(self):
        app = build_app(self.service, self.auth, stream_limit=self.stream_limit, metrics=self.metrics)
        return limit_body(utf8_only(es_header_names(forwarded_for(app, self.trusted_proxies))), self.body_limit)

    def sync(self, wait: bool = False, node: str | None = None, timeout: float = 1800, adopt: bool = False) -> dict:
        """Start a sync with the backup nodes (unless one is running); with `wait`, its finished task."""
        running = [t for t in self.store.pending_tasks() if t.get("kind") == "sync"]
        task_id = running[0]["task_id"] if running else self.service.sync(None, node, adopt=adopt)
        if not wait:
            return self.store.get_task(task_id)
        task = wait_for(self.service, task_id, timeout=timeout, poll=0.3)
        if task["status"] == "PENDING":
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
                vm = self.service.vm_for(admin, str(vm_key))
                existing = self.store.get_definition(vm["uuid"], int(fields.get("disk_id", 1)), str(definition["name"]))
                if existing is not None and not replace:
                    raise errors.NotAcceptable(errors.DEFINITION_EXISTS)
                if existing is not None:
                    self.service.update_definition(admin, vm["uuid"], str(definition["name"]),
                                                   {k: v for k, v in fields.items() if k != "type"})
                    report["replaced"].append(label)
                else:
                    self.service.create_definition(admin, vm["uuid"], str(definition.get("name")), fields)
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
        removed = self.runner.purge(self.run_retention, keep=lambda ident: ident in pending)
        if removed:
            log.info("removed %d finished run folder(s) older than %d days", len(removed),
                     self.run_retention // 86400)
        return removed

    def purge_tasks(self) -> int:
        """Drop the task records (and log lines) of the days older than `task_retention`: a busy service writes
        thousands a day, and every listing and the metrics would grow with them. Failure counts stay."""
        dropped = self.store.purge_tasks(now() - datetime.timedelta(seconds=self.task_retention))
        if dropped:
            log.info("purged %d task record(s) older than %g days", dropped, self.task_retention / 86400)
        return dropped

    def discover(self) -> dict:
        summary = self.discovery.run()
        for node, operational in summary["nodes"].items():
            log.info("node %s: %s", node, "operational" if operational else "NOT operational")
        log.info("%d VMs discovered", summary["vms"])
        return summary

    def start_background(self, discover_every: float | None, schedule: bool = True) -> None:
        if self.alerts is not None:
            self.alerts.start()  # before recovery: jobs that ended while we were down alert too
        recovered = self.service.recover()
        if recovered:
            log.info("following %d job(s) left by an earlier run", recovered)
        for username, changes in self.service.owners_by_uuid().items():
            log.warning("user %s: VMs given by hostname are now kept by uuid: %s", username, changes)
        if schedule:
            self.scheduler.start()
        threading.Thread(target=self._housekeeping, daemon=True, name="housekeeping").start()
        self.store.start_checkpoints(CHECKPOINT_EVERY, self._stop)
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
        from prometheus_client import start_http_server
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.metrics.registry(None))
        log.info("metrics for Prometheus on http://%s:%s/metrics (no authentication)", host or "127.0.0.1", port)


def forwarded_for(app, proxies: frozenset[str]):
    """WSGI middleware: a request from one of `proxies` is the client's that its last X-Forwarded-For entry
    names (what that proxy appended; entries before it are the client's to choose). Login throttling is keyed
    by REMOTE_ADDR: behind a proxy, without this, every client would share the proxy's address."""
    def wsgi(environ, start_response):
        if proxies and environ.get("REMOTE_ADDR") in proxies:
            last = (environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")[-1].strip()
            try:
                environ["REMOTE_ADDR"] = str(ipaddress.ip_address(last))
            except ValueError:
                pass
        return app(environ, start_response)
    return wsgi


def limit_body(app, limit: int):
    """WSGI wrapper: a body declared larger than `limit` is answered 413 before any of it is read.
    (waitress refuses larger chunked bodies itself while reading, see serve.)"""
    def wsgi(environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length > limit or length < 0:
            code = "413 Request Entity Too Large" if length > limit else "400 Bad Request"
            detail = ("Request body too large: at most %d bytes." % limit if length > limit
                      else "Invalid Content-Length header.")
            body = json.dumps({"detail": detail}).encode()
            start_response(code, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Connection", "close")])
            return [body]
        return app(environ, start_response)
    return wsgi


def _json_errors_channel():
    """waitress's own refusals (a body over its limit, a malformed request) as JSON, not text."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JSONErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            body = json.dumps({"detail": "%s: %s" % (error.reason, error.body)}).encode()
            self.status = "%d %s" % (error.code, error.reason)
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JSONErrorChannel(HTTPChannel):
        error_task_class = JSONErrorTask

    return JSONErrorChannel


def serve(listen: str, data_dir: str, inventory: str, discover_every: float | None = 600.0,
          threads: int = 8, size_limit: int | None = None, schedule: bool = True,
          jobs_per_node: int | None = None, schedule_interval: float = 5.0,
          body_limit: int = DEFAULT_BODY_LIMIT, run_retention: float = DEFAULT_RUN_RETENTION,
          stream_limit: float = DEFAULT_STREAM_LIMIT, verify_every: float = DEFAULT_VERIFY_EVERY,
          metrics_listen: str | None = None, webhooks: list[str] | None = None, webhook_secret: bytes | None = None,
          stale_every: float = DEFAULT_STALE_EVERY, job_nice: int = DEFAULT_JOB_NICE, batch_runs: int | None = None,
          sync_import_limit: int = IMPORT_LIMIT, trusted_proxies: list[str] | None = None,
          task_retention: float = DEFAULT_TASK_RETENTION, **engine) -> None:
    import waitress.server

    host, _, port = listen.rpartition(":")
    if webhooks and not webhook_secret:
        raise RuntimeError("--webhook needs a secret to sign with: --webhook-secret-file FILE or "
                           "VMBACKUP_WEBHOOK_SECRET")
    app = Application(data_dir, inventory, size_limit, jobs_per_node, body_limit=body_limit,
                      run_retention=run_retention, stream_limit=stream_limit, verify_every=verify_every,
                      webhooks=webhooks, webhook_secret=webhook_secret, stale_every=stale_every, job_nice=job_nice,
                      batch_runs=batch_runs, sync_import_limit=sync_import_limit, trusted_proxies=trusted_proxies,
                      task_retention=task_retention, **engine)
    app.scheduler.interval = schedule_interval
    if metrics_listen:
        app.serve_metrics(metrics_listen)
    app.start_background(discover_every, schedule)
    log.info("vmbackup API on http://%s:%s/api/ (data in %s)", host or "127.0.0.1", port, app.data_dir)
    # waitress answers a declared or chunked body over its limit with 413 while reading the headers or
    # the chunks (JSON through our channel); limit_body covers the app under any other WSGI server.
    server = waitress.server.create_server(app.wsgi(), host=host or "127.0.0.1", port=int(port), threads=threads,
                                           ident="vmbackup", max_request_body_size=body_limit + 1)
    server.channel_class = _json_errors_channel()
    started = time.monotonic()
    try:
        server.run()
    finally:
        log.info("vmbackup API stopped after %.0f s", time.monotonic() - started)
