"""Tasks: their ids, the record a job starts with, and what a user may read or cancel of them.

A task's life (claims, the per-node limit, the run, its end, recovery after a restart) is the queue's
(`app/queue.py`); here is what the API answers about tasks and how they are named.
"""

from __future__ import annotations

import secrets
import time

from vmbackup.app.queue import JobQueue
from vmbackup.domain import errors
from vmbackup.domain.clock import iso, now
from vmbackup.domain.facts import TaskStatus
from vmbackup.engine.protocol import Engine
from vmbackup.store.store import Store

# What GET /api/task/<id>/ shows of a task; `outcome` (additive) is what its job made and what failed, as data.
TASK_INFO = ("view", "method", "hostname", "disk_id", "bkpname", "define", "username", "started", "finished", "queued",
             "awx_job", "outcome")
# The user the scheduler's jobs (and the record commands' automatic ones) run as.
SCHEDULER = {"id": 0, "username": "scheduler", "is_admin": True, "vms": []}


class Tasks:
    """Task ids, job task records, a user's view of the tasks, cancel and recovery."""

    def __init__(self, store: Store, runner: Engine, queue: JobQueue, dc_id: int = 1):
        self.store = store
        self.runner = runner
        self.queue = queue
        self.dc_id = dc_id

    # -- identities -----------------------------------------------------------------------------
    def new_id(self, user: dict | None, kind: str, owner_id: int | None = None) -> str:
        """`<user><type><owner>d<dc>-<8>-<4>-<4>-<4>` hex; type e (job), a (automatic), d (synchronous)."""
        user_id = user["id"] if user else 0
        owner = owner_id if owner_id is not None else user_id
        h = secrets.token_hex(10)
        return "%d%s%dd%d-%s-%s-%s-%s" % (user_id, kind, owner, self.dc_id, h[:8], h[8:12], h[12:16], h[16:20])

    @staticmethod
    def for_job(task_id: str, user: dict | None, job, extravars: dict, **fields) -> dict:
        """A job's task record: who, what, its playbook and extra vars (kept for a relaunch after a restart)."""
        return dict(fields, task_id=task_id, kind=job.kind, playbook=job.playbook, status=TaskStatus.PENDING,
                    username=user["username"] if user else "scheduler", user_id=user["id"] if user else 0,
                    started=iso(now()), result=None, node=extravars.get("node"), extravars=extravars)

    # -- reading --------------------------------------------------------------------------------
    def visible(self, user: dict, task_id: str) -> dict:
        task = self.store.get_task(task_id)
        if task is None or not (user.get("is_admin") or task.get("user_id") == user["id"]):
            raise errors.NotFound(errors.TASK_NOT_FOUND)
        return task

    def pending_ids(self, user: dict) -> list[str]:
        return [t["task_id"] for t in self.store.pending_tasks()
                if user.get("is_admin") or t.get("user_id") == user["id"]]

    def log(self, user: dict) -> list[dict]:
        entries = [e for e in self.store.task_log() if user.get("is_admin") or e.get("username") == user["username"]]
        return sorted(entries, key=lambda e: e["time"], reverse=True)

    def info(self, user: dict, task_id: str) -> dict:
        """What a task is, and while it runs its current step and bytes sent."""
        task = self.visible(user, task_id)
        info = {k: task.get(k) for k in TASK_INFO}
        info["status"] = task["status"]
        if task["status"] == TaskStatus.PENDING:
            info["progress"] = self.runner.progress(task_id)
        return info

    def get(self, task_id: str) -> dict | None:
        """The task's record, whoever started it (for the server's own use: streams, waits)."""
        return self.store.get_task(task_id)

    def wait(self, task_id: str, timeout: float | None = None, poll: float = 0.5) -> dict:
        """Block until a task ends (`vmbackup sync` waiting, benchmarks, tests); return its record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task is None or task["status"] != TaskStatus.PENDING:
                return task
            if deadline is not None and time.monotonic() > deadline:
                return task
            time.sleep(poll)

    # -- changing -------------------------------------------------------------------------------
    def cancel(self, user: dict, task_id: str) -> None:
        task = self.visible(user, task_id)
        if task["status"] != TaskStatus.PENDING:
            raise errors.NotAcceptable(errors.TASK_NOT_CANCELABLE)
        self.queue.cancel(task)

    def recover(self) -> int:
        """At start: follow the jobs an earlier process left running, or apply how they ended."""
        return self.queue.recover()
