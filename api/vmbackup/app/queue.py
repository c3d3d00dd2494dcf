"""The job queue: how many jobs run per backup node, the jobs waiting for a free slot, and what happens
when a run ends (its job's records applied, its task ended and logged). It alone talks to the runner;
after a restart it follows the runs an earlier process left.

Which VM disks a job claims is kept in the store with its task (`claims`), so that every process on a data
dir (a second `serve`, the CLI) sees the claims of the others: a task is recorded only if none of its
disks is claimed by a pending task, and its claims end with it.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable

from vmbackup.app import jobs
from vmbackup.domain import errors
from vmbackup.domain.clock import iso, now
from vmbackup.domain.events import Events
from vmbackup.domain.facts import TaskStatus
from vmbackup.domain.outcome import Outcome
from vmbackup.engine.protocol import Engine
from vmbackup.engine.runner import RunResult
from vmbackup.store.store import Store

log = logging.getLogger("vmbackup.queue")
Disk = tuple  # (vm uuid, disk_id)


class JobQueue:
    """Claims, per-node limits, launching, finishing, recovery and cancel of jobs."""

    def __init__(self, store: Store, runner: Engine, jobs_per_node: int | None = None,
                 events: Events | None = None):
        self.store = store
        self.runner = runner
        self.events = events or Events()
        self.jobs_per_node = jobs_per_node  # None: no limit; else jobs beyond it wait
        self._running: dict[str, set[str]] = collections.defaultdict(set)  # backup node -> task ids
        self._waiting: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.RLock()
        # Runs are started by a thread of their own: a request returns as soon as its task is recorded
        # (the task, with its playbook and extra vars, is on disk first, so a restart launches it).
        self._launches: queue.Queue = queue.Queue()
        self._starting: set[str] = set()  # handed to the launcher, not started yet (they count as running)
        self._launcher_started = False  # its thread starts with the first launch: a record command starts none

    def _to_launcher(self, task_id: str) -> None:
        """Hand a recorded task to the launcher thread (started now if this is the first)."""
        with self._lock:
            if not self._launcher_started:
                self._launcher_started = True
                threading.Thread(target=self._launcher, daemon=True, name="launcher").start()
        self._launches.put(task_id)

    # -- claims ---------------------------------------------------------------------------------
    def busy(self, disk: Disk) -> str | None:
        """The pending task (of any process) that claims a VM disk, or None."""
        return self.store.claimed(*disk)

    # -- running --------------------------------------------------------------------------------
    def submit(self, task: dict, records: Callable[[], None] | None = None) -> None:
        """Record the task and start its run, or queue it while its backup node has no free slot.
        `records` makes the record changes that go with the job: they and the task are one commit."""
        node = task.get("node")
        task["claims"] = [list(disk) for disk in jobs.for_task(task).disks(task)]
        with self._lock:
            queued = self.jobs_per_node is not None and len(self._running[node]) >= self.jobs_per_node
            task["queued"] = queued
            with self.store.lock:
                self.store.insert_task(task)  # first: a disk claimed meanwhile refuses it before any change
                if records is not None:
                    records()
            if queued:
                self._waiting[node].append(task["task_id"])
                return
            self._running[node].add(task["task_id"])
        self._hand_over(task)

    def _hand_over(self, task: dict) -> None:
        with self._lock:
            self._starting.add(task["task_id"])
        # Never a run for a task that is not on disk yet (a caller's transaction may still be open).
        self.store.after_commit(lambda: self._to_launcher(task["task_id"]))

    def _launcher(self) -> None:
        while True:
            task_id = self._launches.get()
            try:
                task = self.store.get_task(task_id)
                if task is not None and task["status"] == TaskStatus.PENDING:  # not canceled meanwhile
                    self._launch(task)
            except Exception:  # one bad launch must not stop the others
                log.exception("launching %s failed", task_id)
            finally:
                with self._lock:
                    self._starting.discard(task_id)

    def _launch(self, task: dict) -> None:
        task_id = task["task_id"]
        extravars = dict(task["extravars"], vmbackup_progress_file=self.runner.progress_file(task_id))
        try:
            found_by = self.runner.start(task_id, task["playbook"], extravars, lambda run: self.finish(task_id, run))
        except (OSError, RuntimeError) as err:  # RuntimeError: the engine (AWX) refused
            self.finish(task_id, RunResult("failed", None, {}, "the job could not start: %s" % err))
            return
        # What finds the run again ({"pid": ...} locally, {"awx_job": ...} on AWX) goes on the task.
        self.store.update_task(task_id, dict(found_by, queued=False, launched=iso(now())))
        current = self.store.get_task(task_id)
        if current is not None and current["status"] != TaskStatus.PENDING:
            self.runner.cancel(task_id)  # canceled while it was being started

    def _next(self, node: str | None) -> None:
        """A job on `node` ended: start the next waiting one there, if any."""
        # Which runs still live is asked outside the lock (the AWX engine asks over HTTP); a run added
        # meanwhile was not asked about and stays.
        with self._lock:
            asked = {t for t in self._running[node] if t not in self._starting}
        ended = {t for t in asked if not self.runner.running(t)}
        with self._lock:
            self._running[node] -= ended - self._starting
            if not self._waiting[node] or (self.jobs_per_node is not None
                                           and len(self._running[node]) >= self.jobs_per_node):
                return
            task_id = self._waiting[node].popleft()
            self._running[node].add(task_id)
        task = self.store.get_task(task_id)
        if task and task["status"] == TaskStatus.PENDING:
            self._hand_over(task)

    def finish(self, task_id: str, run: RunResult) -> None:
        """Apply a finished run to the records, end its task and log it."""
        task = self.store.get_task(task_id)
        if task is None or task["status"] != TaskStatus.PENDING:
            return
        job = jobs.for_task(task)
        try:
            outcome = job.apply(self.store, task, run)
            detail, message = job.detail(outcome), job.message(task, outcome.ok)
        except Exception as err:  # a bug in applying must still end the task and free its disks
            log.exception("applying the result of %s failed", task_id)
            detail = "the result could not be applied: %s" % err
            outcome = Outcome(False, failed=[{"why": detail}])
            message = job.failure or "%s failed" % job.kind.capitalize()
        status = TaskStatus.SUCCESS if outcome.ok else TaskStatus.FAILURE
        result = {"returncode": 0 if outcome.ok else (run.rc if run.rc not in (None, 0) else 1),
                  "message": message, "detail": detail}
        # What was made and what failed, as data: what the metrics count and the alerts send (the detail is text
        # for the API's clients, read by nothing of ours).
        self.store.update_task(task_id, {"status": status, "result": result, "finished": iso(now()),
                                         "outcome": outcome.record()})
        self.store.log({"time": iso(now()), "task": task_id, "status": status, "username": task["username"],
                        "msg": result["message"], "detail": detail, "object_name": task.get("hostname"),
                        "task_type": task_id.split("-")[0], "outcome": outcome.record()})
        with self._lock:
            self._running[task.get("node")].discard(task_id)
        self._next(task.get("node"))
        # Listeners (alerts, metrics) hear of every ended job, and of what it found (a sync's LOST backups).
        self.events.emit("job_ended", task=dict(task, status=status, result=result, outcome=outcome.record()),
                         ok=outcome.ok, **outcome.facts)

    def recover(self) -> int:
        """At start: follow the runs of pending jobs (or queue them again); their claims are in the store."""
        pending = self.store.pending_tasks()
        for task in pending:
            with self._lock:
                if task.get("queued"):
                    self._waiting[task.get("node")].append(task["task_id"])
                    continue
                self._running[task.get("node")].add(task["task_id"])
            if not task.get("launched") and not self.runner.started(task["task_id"]):
                self._hand_over(task)  # recorded and answered, but the service stopped before it started
                continue
            self.runner.reattach(task["task_id"], lambda run, t=task["task_id"]: self.finish(t, run))
        return len(pending)

    def cancel(self, task: dict) -> None:
        """Stop a job: a waiting one ends at once; a running one is signalled (406 if it cannot be)."""
        task_id = task["task_id"]
        with self._lock:
            waiting = self._waiting[task.get("node")]
            if task_id in waiting or task_id in self._starting:
                if task_id in waiting:
                    waiting.remove(task_id)
                self.finish(task_id, RunResult("canceled", None, {}, "canceled before it started"))
                return
        if not self.runner.cancel(task_id):
            raise errors.NotAcceptable(errors.TASK_NOT_CANCELABLE)

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs running and waiting per backup node."""
        with self._lock:
            nodes = set(self._running) | set(self._waiting)
            return {node: {"running": len(self._running[node]), "queued": len(self._waiting[node])}
                    for node in nodes if node is not None}
