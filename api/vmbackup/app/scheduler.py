"""The scheduler: every active definition runs at its cron time (UTC) as an automatic job.

Each definition remembers the last due time it handled (`last_due`, in the store). A tick claims
the newest due time at or before now under the store's lock before it starts anything, so a due
time is handled once whatever the number of threads, and a restart does not repeat it; due times
missed while the service was down collapse into that one newest run. A file lock keeps a second
service instance on the same data from scheduling too.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import logging
import os
import threading
import time

from croniter import croniter

from vmbackup.app.service import Service
from vmbackup.app.tasks import SCHEDULER
from vmbackup.domain import errors
from vmbackup.domain.clock import iso, now, parse
from vmbackup.domain.facts import TaskStatus

log = logging.getLogger("vmbackup.scheduler")


def latest_due(schedule: str, after: datetime.datetime, until: datetime.datetime) -> datetime.datetime | None:
    """The newest time the schedule was due in (after, until], or None."""
    times = croniter(schedule, after)
    due = None
    while True:
        candidate = times.get_next(datetime.datetime)
        if candidate > until:
            return due
        due = candidate


class Scheduler:
    """Ticks every `interval` seconds and starts the definitions that are due."""

    def __init__(self, service: Service, data_dir: str, interval: float = 5.0, verify_every: float = 7 * 86400,
                 drills_per_tick: int = 2):
        self.service = service
        self.store = service.store
        self.interval = interval
        self.verify_every = verify_every  # seconds between drills of a definition's newest backup; 0: none
        self.drills_per_tick = drills_per_tick
        self._drills_checked: datetime.datetime | None = None
        self._lockfile = os.path.join(data_dir, "scheduler.lock")
        self._stop = threading.Event()
        self._handle = None
        self._next: dict[tuple, tuple] = {}  # definition key -> ((schedule, last_due), next due time)

    def acquire(self) -> bool:
        """Only one scheduler per data dir: the first instance to lock the file."""
        self._handle = open(self._lockfile, "w")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.close()
            self._handle = None
            return False
        return True

    def start(self) -> bool:
        if not self.acquire():
            log.warning("another instance schedules backups for this data dir; this one will not")
            return False
        self.warm()
        threading.Thread(target=self._loop, daemon=True, name="scheduler").start()
        return True

    def warm(self) -> None:
        """Work out every definition's next due time and newest backup before the service answers: done in
        the first tick, beside the first requests, it held them up (4,000 definitions: ~100 ms of cron
        arithmetic, then a read of every backup record)."""
        started = time.monotonic()
        definitions = self.store.definitions()
        try:
            for definition in definitions:
                if definition.get("active"):
                    self.next_due(definition)
            self.service.backups.drill_candidates()
        except Exception:  # the ticks meet the same error and log it each time; the service must start
            log.exception("scheduler warm-up failed")
        log.info("scheduler: %d definitions looked at in %.2f s", len(definitions), time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the scheduler must outlive any one bad definition
                log.exception("scheduler tick failed")
            self._stop.wait(self.interval)

    def tick(self, when: datetime.datetime | None = None) -> list[str]:
        """Start every definition due by `when`; return the task ids started.

        Definitions due together go to their backup node in one batch run (Ansible starts once).
        """
        when = when or now()
        try:
            return self._backups(when)
        finally:
            # After the backups (a drill waits for a disk that has a backup to make), and once a minute at
            # most: finding each definition's newest backup reads every backup record.
            if self.verify_every and (self._drills_checked is None or (when - self._drills_checked).total_seconds()
                                      >= min(60.0, self.verify_every / 4)):
                self._drills_checked = when
                self.drills(when)

    def _backups(self, when: datetime.datetime) -> list[str]:
        due = []
        for definition in self.store.definitions():
            if definition.get("active") and self.next_due(definition) <= when:
                due_time = self.claim(definition, when)
                if due_time is not None:
                    due.append((definition, due_time))
        if len(due) == 1:
            task_id = self.run(*due[0])
            return [task_id] if task_id else []
        if not due:
            return []
        started, refused = self.service.backups.create_batch([d for d, _ in due])
        due_times = {(d["vm_uuid"], d["disk_id"], d["name"]): t for d, t in due}
        for definition, reason in refused:
            self.refused(definition, due_times[(definition["vm_uuid"], definition["disk_id"],
                                                definition["name"])], reason)
        log.info("%d definitions due: %d batch run(s), %d not started", len(due), len(started), len(refused))
        return started

    def drill_due(self, definition: dict, when: datetime.datetime) -> bool:
        """A definition's newest backup is drilled every `verify_every` seconds; the first drill of each
        definition comes half an interval after it was created plus a stable share of the other half, so that
        drills do not all start at once (nor right after a definition is made)."""
        last = parse(definition.get("last_drill"))
        if last is not None:
            return (when - last).total_seconds() >= self.verify_every
        key = "%s:%s:%s" % (definition["vm_uuid"], definition["disk_id"], definition["name"])
        half = max(1, int(self.verify_every / 2))
        offset = half + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % half
        start = parse(definition.get("created")) or when
        return (when - start).total_seconds() >= offset

    def drills(self, when: datetime.datetime) -> list[str]:
        """Start the restore drills that are due (a few per tick); a disk with a job is tried next tick."""
        definitions = {(d["vm_uuid"], d["disk_id"], d["name"]): d for d in self.store.definitions()}
        started = []
        for backup in self.service.backups.drill_candidates():
            if len(started) >= self.drills_per_tick:
                break
            definition = definitions.get((backup["vm_uuid"], backup["disk_id"], backup["define"]))
            if definition is None or not self.drill_due(definition, when):
                continue
            try:
                task_id = self.service.backups.verify(SCHEDULER, backup["vm_uuid"], backup["name"],
                                                      {"disk_id": backup["disk_id"]}, automatic=True)
            except (errors.ApiError, errors.ValidationFailed) as err:
                log.info("drill of %s/%s waits: %s", backup["hostname"], backup["name"], getattr(err, "detail", err))
                continue
            with self.store.lock:  # due again only after a whole interval, whatever its outcome
                current = self.store.get_definition(backup["vm_uuid"], backup["disk_id"], backup["define"])
                if current is not None:
                    self.store.save_definition(dict(current, last_drill=iso(when)))
            log.info("drill of %s/%s: task %s", backup["hostname"], backup["name"], task_id)
            started.append(task_id)
        return started

    def next_due(self, definition: dict) -> datetime.datetime:
        """When a definition is next due, computed once per (schedule, last_due): ticks stay cheap."""
        key = (definition["vm_uuid"], definition["disk_id"], definition["name"])
        basis = (definition["schedule"], definition.get("last_due") or definition.get("created"))
        cached = self._next.get(key)
        if cached is None or cached[0] != basis:
            start = parse(basis[1]) or now()
            cached = (basis, croniter(definition["schedule"], start).get_next(datetime.datetime))
            self._next[key] = cached
        return cached[1]

    def claim(self, definition: dict, when: datetime.datetime) -> datetime.datetime | None:
        """Record that the newest due time up to `when` is handled; None if none is due or it was taken."""
        with self.store.lock:
            current = self.store.get_definition(definition["vm_uuid"], definition["disk_id"], definition["name"])
            if current is None or not current.get("active"):
                return None
            last = parse(current.get("last_due")) or parse(current.get("created")) or when
            due = latest_due(current["schedule"], last, when)
            if due is None:
                return None
            self.store.save_definition(dict(current, last_due=iso(due)))
            return due

    def refused(self, definition: dict, due: datetime.datetime, reason: str) -> None:
        """Write to the task log why a due backup did not start."""
        self.store.log({"time": iso(now()), "task": None, "status": TaskStatus.FAILURE, "username": "scheduler",
                        "msg": "Scheduled backup not started", "detail": "%s (due %s)" % (reason, iso(due)),
                        "object_name": definition["hostname"], "task_type": "a",
                        "define": definition["name"], "disk_id": definition["disk_id"]})
        log.warning("%s/%s disk %s due %s not started: %s", definition["hostname"], definition["name"],
                    definition["disk_id"], iso(due), reason)

    def run(self, definition: dict, due: datetime.datetime) -> str | None:
        """Start the backup as if an admin had POSTed it; log why if it cannot start."""
        try:
            task_id = self.service.backups.create(SCHEDULER, definition["vm_uuid"], definition["name"],
                                                  {"disk_id": definition["disk_id"]}, automatic=True)
        except (errors.ApiError, errors.ValidationFailed) as err:
            self.refused(definition, due, getattr(err, "detail", None) or str(err))
            return None
        log.info("%s/%s disk %s due %s: task %s", definition["hostname"], definition["name"],
                 definition["disk_id"], iso(due), task_id)
        return task_id
