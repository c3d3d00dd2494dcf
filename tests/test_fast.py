"""The fast tier: the store, queue, scheduler, service and routes as they are, with a fake engine where the
playbooks would run (tests/fake_engine.py). No pool, no ssh, no ansible: seconds. What only a real run can show
(the modules on ZFS, the playbooks, ansible-runner, AWX) stays in the other files."""

from __future__ import annotations

import datetime
import json
import time

import pytest
from fake_engine import FakeEngine, backup_answer

from vmbackup.app.config import Config
from vmbackup.app.scheduler import Scheduler
from vmbackup.app.service import Service
from vmbackup.app.tasks import SCHEDULER
from vmbackup.domain import errors
from vmbackup.domain.clock import iso
from vmbackup.domain.facts import BackupStatus, TaskStatus
from vmbackup.engine.awx import AwxEngine
from vmbackup.engine.protocol import Engine
from vmbackup.engine.runner import Runner
from vmbackup.http.routes import build_app
from vmbackup.store.store import Store

ADMIN = {"id": 1, "username": "admin", "is_admin": True, "vms": []}
VMS = {"web": "0a1b2c3d-0000-4000-8000-00000000f001", "db": "0a1b2c3d-0000-4000-8000-00000000f002"}


def until(condition, timeout: float = 10.0) -> bool:
    """Whether `condition()` holds within `timeout` seconds (the queue launches on a thread of its own)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def seeded(tmp_path, engine: FakeEngine, jobs_per_node=None) -> Service:
    store = Store(str(tmp_path / "data"))
    store.upsert_node({"name": "tc", "roles": ["compute"], "operational": True, "pools": {"zones": {"free": 10**10}}})
    store.upsert_node({"name": "tb", "roles": ["backup"], "operational": True, "pools": {"backup": {"free": 10**10}}})
    for name, uuid in VMS.items():
        store.upsert_vm({"uuid": uuid, "hostname": name + ".fast", "node": "tc", "brand": "kvm", "state": "running",
                         "disks": [{"disk_id": 1, "dataset": "zones/%s-disk0" % uuid, "size": 2**30, "snapshots": 0}],
                         "installed": True, "locked": False})
    service = Service(store, engine, Config(jobs_per_node=jobs_per_node))
    for name in VMS:
        service.definitions.create(ADMIN, name + ".fast", "daily", {"node": "tb", "zpool": "backup",
                                                                    "schedule": "0 4 * * *", "retention": 3})
    return service


def test_every_engine_is_an_engine(tmp_path):
    assert isinstance(Runner(str(tmp_path / "runs"), str(tmp_path / "hosts.yml")), Engine)
    assert isinstance(AwxEngine("https://awx.example", "t0ken", str(tmp_path / "awx")), Engine)
    assert isinstance(FakeEngine(str(tmp_path)), Engine)


def test_a_backup_is_recorded_with_what_its_run_reported(tmp_path):
    engine = FakeEngine(str(tmp_path / "runs"), answer=lambda playbook, extravars: backup_answer(extravars, size=777))
    service = seeded(tmp_path, engine)
    task_id = service.backups.create(ADMIN, "web.fast", "daily", {})
    task = service.tasks.wait(task_id, timeout=10, poll=0.02)
    assert task["status"] == TaskStatus.SUCCESS, task
    playbook, extravars = engine.started_runs[task_id]
    assert playbook == "backup.yml" and extravars["hostname"] == "web.fast" and extravars["keep_snapshot"] is True
    (backup,) = service.store.backups(vm_uuid=VMS["web"])
    assert backup["status"] == BackupStatus.OK and backup["size"] == 777


def test_a_failed_run_leaves_no_record_and_is_counted(tmp_path):
    engine = FakeEngine(str(tmp_path / "runs"), answer=lambda playbook, extravars: backup_answer(extravars, ok=False))
    service = seeded(tmp_path, engine)
    task = service.tasks.wait(service.backups.create(ADMIN, "web.fast", "daily", {}), timeout=10, poll=0.02)
    assert task["status"] == TaskStatus.FAILURE and "did not answer" in json.dumps(task), task
    assert service.store.backups(vm_uuid=VMS["web"]) == []
    assert sum(service.store.failure_counts().values()) == 1


@pytest.mark.parametrize("broken", ["apply", "detail", "message"])
def test_a_bug_in_ending_a_job_still_ends_its_task_and_frees_its_disk(tmp_path, monkeypatch, broken):
    """Whatever part of turning a run into records fails (a bug, a record it does not expect), the task ends in
    FAILURE, says why, and the disk takes the next job: nothing stays PENDING for ever."""
    from vmbackup.app.jobs import BackupJob

    def bug(*_args, **_kwargs):
        raise KeyError("items")

    monkeypatch.setattr(BackupJob, broken, bug)
    service = seeded(tmp_path, FakeEngine(str(tmp_path / "runs")))
    task = service.tasks.wait(service.backups.create(ADMIN, "web.fast", "daily", {}), timeout=10, poll=0.02)
    assert task["status"] == TaskStatus.FAILURE and task["result"]["message"] == "Backup failed", task
    assert task["result"]["detail"] == "the result could not be applied: 'items'"
    assert task["outcome"]["failed"] == [{"why": task["result"]["detail"]}]
    assert service.backups.busy(VMS["web"], 1) is None


def test_jobs_beyond_the_limit_of_a_backup_node_wait_for_a_free_slot(tmp_path):
    engine = FakeEngine(str(tmp_path / "runs"), hold=True)
    service = seeded(tmp_path, engine, jobs_per_node=1)
    first = service.backups.create(ADMIN, "web.fast", "daily", {})
    second = service.backups.create(ADMIN, "db.fast", "daily", {})
    assert until(lambda: engine.running(first))
    assert not engine.started(second) and service.store.get_task(second)["queued"] is True
    time.sleep(1.05)  # a backup name is <bkpdef>-<UTC second>: the next one is another backup of the same disk
    with pytest.raises(errors.Conflict):  # the disk a pending job holds
        service.backups.create(ADMIN, "web.fast", "daily", {})
    engine.release(first)
    assert service.tasks.wait(first, timeout=10, poll=0.02)["status"] == TaskStatus.SUCCESS
    assert until(lambda: engine.running(second))  # the slot it freed
    engine.release(second)
    assert service.tasks.wait(second, timeout=10, poll=0.02)["status"] == TaskStatus.SUCCESS


def test_a_due_definition_runs_once_in_one_batch(tmp_path):
    engine = FakeEngine(str(tmp_path / "runs"))
    service = seeded(tmp_path, engine)
    for uuid in VMS.values():
        stored = service.store.get_definition(uuid, 1, "daily")
        service.store.save_definition(dict(stored, last_due=iso(datetime.datetime(2026, 11, 27, 5, 0,
                                                                                  tzinfo=datetime.timezone.utc))))
    when = datetime.datetime(2026, 11, 28, 4, 0, 5, tzinfo=datetime.timezone.utc)
    started = Scheduler(service, str(tmp_path / "data")).tick(when)
    assert len(started) == 1 and Scheduler(service, str(tmp_path / "data")).tick(when) == []
    assert service.tasks.wait(started[0], timeout=10, poll=0.02)["status"] == TaskStatus.SUCCESS
    playbook, extravars = engine.started_runs[started[0]]
    assert sorted(item["hostname"] for item in extravars["backups"]) == ["db.fast", "web.fast"]
    assert len(service.store.backups()) == 2 and SCHEDULER["username"]


def test_the_routes_answer_in_the_apis_envelopes(tmp_path):
    """The Bottle app in-process (no socket): a VM owner's listing and a job's 201 PENDING envelope."""
    from vmbackup.app.auth import Auth
    engine = FakeEngine(str(tmp_path / "runs"), hold=True)
    service = seeded(tmp_path, engine)
    auth = Auth(service.store)
    key = auth.add_user("ops", "a-long-enough-password", admin=True)
    app = build_app(service, auth)

    def call(method, path, body=None):
        data = json.dumps(body or {}).encode()
        environ = {"REQUEST_METHOD": method, "PATH_INFO": "/api" + path, "SERVER_NAME": "fast", "SERVER_PORT": "80",
                   "wsgi.url_scheme": "http", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(data)),
                   "wsgi.input": __import__("io").BytesIO(data), "HTTP_ES_API_KEY": key, "REMOTE_ADDR": "127.0.0.1"}
        status = []
        out = b"".join(app(environ, lambda code, headers, exc=None: status.append(code)))
        return int(status[0].split()[0]), json.loads(out)

    code, body = call("GET", "/vm/web.fast/define/backup")
    assert code == 200 and body["status"] == "SUCCESS" and body["result"] == ["daily"], body
    code, body = call("POST", "/vm/web.fast/backup/daily")
    assert code == 201 and body["status"] == "PENDING" and until(lambda: engine.running(body["task_id"])), body
    engine.release(body["task_id"])
    assert service.tasks.wait(body["task_id"], timeout=10, poll=0.02)["status"] == TaskStatus.SUCCESS
