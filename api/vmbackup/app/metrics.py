"""Prometheus metrics, read from the store at each scrape (a custom collector: nothing is counted in
memory, so a restart, a second instance or `vmbackup user` writing the same data dir never makes them drift).

Per definition (VM disk and definition): the newest good backup's time, size and duration, its
lateness in schedule intervals (as `vmbackup check` counts it), the last restore drill, and the backup
jobs that failed (counted by the store as tasks end, from the `failed` backups of their `outcome`, and kept
when old tasks are purged). Per backup node: backups by status (LOST among them), jobs running and queued. And the
scheduler's lag: how long the oldest due definition has waited to start.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from vmbackup.app import check
from vmbackup.domain import facts
from vmbackup.domain.clock import now, parse
from vmbackup.domain.facts import BackupStatus
from vmbackup.store.store import Store

DEFINITION_LABELS = ["hostname", "vm_uuid", "disk_id", "definition", "node"]
Visible = Callable[[str], bool]  # vm uuid -> may the reader see its series


class BackupCollector(Collector):
    """Every series, from the store (and the queue and scheduler of this process, when given)."""

    def __init__(self, store: Store, queue=None, scheduler=None, visible: Visible | None = None):
        self.store = store
        self.queue = queue
        self.scheduler = scheduler
        self.visible = visible  # None: everything, node-wide series included

    def collect(self) -> Iterator:
        when = now()
        with self.store.lock:  # one consistent view
            definitions = [d for d in self.store.definitions() if self._sees(d["vm_uuid"])]
            backups = [b for b in self.store.backups() if self._sees(b["vm_uuid"])]
            failed = self.store.failure_counts()
            nodes = [n for n in self.store.nodes() if "backup" in n.get("roles", [])]
        yield from self._definitions(definitions, backups, failed, when)
        if self.visible is None:
            yield from self._nodes(nodes, backups)
            yield from self._scheduler(definitions, when)

    def _sees(self, vm_uuid: str) -> bool:
        return self.visible is None or self.visible(vm_uuid)

    def _definitions(self, definitions: list[dict], backups: list[dict], failed: collections.Counter,
                     when) -> Iterator:
        def gauge(name, doc):
            return GaugeMetricFamily(name, doc, labels=DEFINITION_LABELS)

        last = gauge("vmbackup_last_backup_timestamp_seconds", "When the newest good (status 1) backup was taken")
        size = gauge("vmbackup_last_backup_size_bytes", "Size of the newest good backup")
        took = gauge("vmbackup_last_backup_duration_seconds", "How long the newest good backup took")
        late = gauge("vmbackup_backup_age_intervals",
                     "Age of the newest good backup (or of the definition) in schedule intervals, as check counts")
        verified = gauge("vmbackup_last_verified_timestamp_seconds", "When a restore drill last passed")
        passed = gauge("vmbackup_last_verify_passed", "Whether the last restore drill passed (1) or failed (0)")
        failures = CounterMetricFamily("vmbackup_backup_failures", "Backup jobs that did not make their backup",
                                       labels=DEFINITION_LABELS)
        by_definition = collections.defaultdict(list)
        for backup in backups:
            by_definition[(backup["vm_uuid"], backup["disk_id"], backup["define"])].append(backup)
        thresholds = check.Thresholds()
        for definition in definitions:
            key = (definition["vm_uuid"], definition["disk_id"], definition["name"])
            labels = [definition["hostname"], definition["vm_uuid"], str(definition["disk_id"]), definition["name"],
                      definition.get("node") or ""]
            mine = by_definition.get(key, [])
            failures.add_metric(labels, failed.get(key, 0))
            good = check.newest_good(mine)
            if good is not None:
                last.add_metric(labels, parse(good["created"]).timestamp())
                if good.get("size") is not None:
                    size.add_metric(labels, float(good["size"]))
                if good.get("time") is not None:
                    took.add_metric(labels, float(good["time"]))
            if definition.get("active") and definition.get("schedule"):
                late.add_metric(labels, check.finding(definition, mine, when, thresholds).intervals)
            drilled = check.newest_verified(mine)
            if drilled is not None:
                if parse(drilled.get("verified")):
                    verified.add_metric(labels, parse(drilled["verified"]).timestamp())
                if drilled.get("verify_status") in ("passed", "failed"):
                    passed.add_metric(labels, 1.0 if drilled["verify_status"] == "passed" else 0.0)
        yield from (last, size, took, late, verified, passed, failures)

    def _nodes(self, nodes: list[dict], backups: list[dict]) -> Iterator:
        counts = collections.Counter((b.get("node") or "", b.get("status")) for b in backups)
        names = sorted({n["name"] for n in nodes} | {node for node, _status in counts})
        by_status = GaugeMetricFamily("vmbackup_backups", "Backup records by backup node and status",
                                      labels=["node", "status"])
        lost = GaugeMetricFamily("vmbackup_backups_lost", "Backups whose data a sync found gone (status 4 LOST)",
                                 labels=["node"])
        for name in names:
            for code, word in facts.STATUSES.items():
                by_status.add_metric([name, word], counts.get((name, code), 0))
            lost.add_metric([name], counts.get((name, BackupStatus.LOST), 0))
        running = GaugeMetricFamily("vmbackup_jobs_running", "Jobs running per backup node", labels=["node"])
        queued = GaugeMetricFamily("vmbackup_jobs_queued", "Jobs waiting for a free slot per backup node",
                                   labels=["node"])
        jobs = self.queue.counts() if self.queue is not None else {}
        for name in sorted(set(names) | set(jobs)):
            running.add_metric([name], jobs.get(name, {}).get("running", 0))
            queued.add_metric([name], jobs.get(name, {}).get("queued", 0))
        yield from (by_status, lost, running, queued)

    def _scheduler(self, definitions: list[dict], when) -> Iterator:
        if self.scheduler is None:
            return
        due = [self.scheduler.next_due(d) for d in definitions if d.get("active") and d.get("schedule")]
        late = [(when - t).total_seconds() for t in due if t <= when]
        lag = GaugeMetricFamily("vmbackup_scheduler_lag_seconds",
                                "Seconds the oldest due definition has waited to start (0: none is waiting)")
        lag.add_metric([], max(late, default=0.0))
        yield lag


def registry(store: Store, queue=None, scheduler=None, visible: Visible | None = None) -> CollectorRegistry:
    """A registry of its own holding only our collector (not the process-wide default one)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(BackupCollector(store, queue, scheduler, visible))
    return found


class Metrics:
    """The exposition for a reader: an admin (or the scraper's own listener) sees everything, an owner the
    series of its own VMs only, without the node-wide ones."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service, scheduler=None):
        self.service = service
        self.scheduler = scheduler

    def registry(self, user: dict | None) -> CollectorRegistry:
        visible = None if user is None or user.get("is_admin") else \
            (lambda vm_uuid: self.service.access.may_see(user, vm_uuid))
        return registry(self.service.store, self.service.queue, self.scheduler, visible)

    def render(self, user: dict | None) -> bytes:
        return generate_latest(self.registry(user))
