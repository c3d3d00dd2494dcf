"""An engine that runs no playbook, for the fast tier: each run ends with what the test says, at once or when the
test releases it, and answers as the playbooks do (a backup run's `vmbackup_result` keyed by batch key). It is a
`vmbackup.engine.protocol.Engine` like the local runner and the AWX engine, and stands in only for where the
playbooks run: the store, the queue, the scheduler, the service and the routes above it are the real ones. The
real-engine tests (ansible-runner on zfs-fuse pools, OpenZFS guests) stay beside these."""

from __future__ import annotations

import os
import threading

from vmbackup.domain import facts
from vmbackup.engine.runner import RunResult


def backup_answer(extravars: dict, ok: bool = True, size: int = 4096) -> RunResult:
    """What backup.yml reports: one record per item of the batch (its `backups`, or the run's own variables)."""
    items = extravars.get("backups") or [extravars]
    records = {facts.batch_key(i["vm_uuid"], i["disk_id"], i["bkpname"]):
               {"ok": ok, "name": i["bkpname"], "size": size, "time": 0.1, "pruned": [],
                "msg": "" if ok else "snapshot: the compute node did not answer"} for i in items}
    return RunResult("successful" if ok else "failed", 0 if ok else 2, {"ok": ok, "backups": records},
                     "" if ok else "the playbook failed")


class FakeEngine:
    """Runs kept in memory; `hold=True` keeps each running until `release(ident)`."""

    def __init__(self, runs_dir: str, answer=None, hold: bool = False):
        self.runs_dir = runs_dir
        self.answer = answer or (lambda playbook, extravars: backup_answer(extravars))
        self.hold = hold
        self.started_runs: dict[str, tuple[str, dict]] = {}
        self._done: dict[str, RunResult] = {}
        self._waiting: dict[str, object] = {}
        self._lock = threading.Lock()

    def start(self, ident, playbook, extravars, on_done) -> dict:
        with self._lock:
            self.started_runs[ident] = (playbook, dict(extravars))
            self._waiting[ident] = on_done
        if not self.hold:
            self.release(ident)
        return {"pid": 0}

    def release(self, ident: str) -> None:
        """End a run with its answer; the callback runs on a thread of its own, as the real engines call it."""
        with self._lock:
            on_done = self._waiting.pop(ident)
            playbook, extravars = self.started_runs[ident]
            self._done[ident] = result = self.answer(playbook, extravars)
        threading.Thread(target=on_done, args=(result,), daemon=True).start()

    def started(self, ident) -> bool:
        return ident in self.started_runs

    def reattach(self, ident, on_done) -> None:
        with self._lock:
            self._waiting[ident] = on_done

    def running(self, ident) -> bool:
        return ident in self._waiting

    def cancel(self, ident) -> bool:
        with self._lock:
            on_done = self._waiting.pop(ident, None)
        if on_done is not None:
            threading.Thread(target=on_done, args=(RunResult("canceled", None, {}, "canceled"),), daemon=True).start()
        return on_done is not None

    def progress(self, ident) -> dict:
        return {"step": "Send" if ident in self._waiting else None}

    def progress_file(self, ident, item=None) -> str:
        return os.path.join(self.runs_dir, ident, "progress.json")

    def events(self, ident) -> list[dict]:
        return []

    def result(self, ident) -> RunResult:
        return self._done.get(ident, RunResult("lost", None, {}, "no such run"))

    def remove(self, ident) -> None:
        self._done.pop(ident, None)

    def purge(self, older_than, keep) -> list[str]:
        return []
