"""Schedules: each due time runs once (threads, restarts), missed runs collapse into one, retention
keeps exactly N, a node's job limit queues the rest, and a live server fires a definition on its own.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
import threading
import time

import pytest
from api_env import ADMIN, make_vm, new_env, seed, write_inventory
from conftest import snapshots

from vmbackup.app.application import Application
from vmbackup.app.config import Config
from vmbackup.app.scheduler import Scheduler
from vmbackup.app.tasks import SCHEDULER
from vmbackup.domain.clock import iso


def utc(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc)


@pytest.fixture
def app(lab):
    """The service in-process (no HTTP), with the lab's test pools as nodes `tc` and `tb`."""
    data_dir = tempfile.mkdtemp(prefix="vmbackup-sched-", dir="/var/tmp")
    inventory = data_dir + "/hosts.yml"
    write_inventory(inventory, lab)
    application = Application(Config(data_dir=data_dir, inventory=inventory))
    for name, roles, pool in (("tc", ["compute"], lab.compute_pool), ("tb", ["backup"], lab.backup_pool)):
        application.store.upsert_node({"name": name, "roles": roles, "operational": True,
                                       "pools": {pool: {"free": 10**10}}})
    yield application
    for task in application.store.pending_tasks():
        application.service.tasks.wait(task["task_id"], timeout=120)
    shutil.rmtree(data_dir, ignore_errors=True)


def definition(app, lab, vm, name="hourly", schedule="0 * * * *", last_due=None, **extra) -> dict:
    created = app.service.definitions.create(SCHEDULER, vm.hostname, name, dict(
        {"node": "tb", "zpool": lab.backup_pool, "schedule": schedule, "retention": 0}, **extra))
    if last_due:
        stored = app.store.get_definition(vm.uuid, 1, name)
        app.store.save_definition(dict(stored, last_due=iso(last_due)))
    return created


def test_a_due_time_runs_once_whatever_the_number_of_threads(app, lab):
    vm = make_vm(lab, "sched")
    seed(app.store, lab, vm)
    definition(app, lab, vm, last_due=utc(2026, 11, 28, 9, 30))
    when = utc(2026, 11, 28, 10, 0, 5)
    schedulers = [Scheduler(app.service, app.data_dir) for _ in range(4)]
    started: list[str] = []
    threads = [threading.Thread(target=lambda s=s: started.extend(s.tick(when))) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 1
    assert Scheduler(app.service, app.data_dir).tick(when + datetime.timedelta(seconds=30)) == []
    task = app.service.tasks.wait(started[0], timeout=120)
    assert task["status"] == "SUCCESS" and started[0].startswith("0a0d1-")  # an automatic job
    assert len(app.store.backups(vm_uuid=vm.uuid)) == 1


def test_a_restart_does_not_run_a_due_time_again(app, lab):
    vm = make_vm(lab, "restart")
    seed(app.store, lab, vm)
    definition(app, lab, vm, last_due=utc(2026, 11, 28, 9, 30))
    when = utc(2026, 11, 28, 10, 0, 5)
    first = Scheduler(app.service, app.data_dir).tick(when)
    assert len(first) == 1
    app.service.tasks.wait(first[0], timeout=120)
    restarted = Application(app.config)  # a new process reading the same records
    assert Scheduler(restarted.service, restarted.data_dir).tick(when) == []


def test_missed_runs_collapse_into_one_catch_up_run(app, lab):
    vm = make_vm(lab, "missed")
    seed(app.store, lab, vm)
    definition(app, lab, vm, schedule="*/5 * * * *", last_due=utc(2026, 11, 28, 6, 0))  # 4 hours of runs missed
    started = Scheduler(app.service, app.data_dir).tick(utc(2026, 11, 28, 10, 2))
    assert len(started) == 1
    assert app.store.get_definition(vm.uuid, 1, "hourly")["last_due"].startswith("2026-11-28T10:00:00")
    app.service.tasks.wait(started[0], timeout=120)


def test_a_run_that_cannot_start_is_logged_with_the_reason(app, lab):
    vm = make_vm(lab, "cannot")
    seed(app.store, lab, vm, state="unknown")
    app.store.save_definition({"hostname": vm.hostname, "vm_uuid": vm.uuid, "name": "hourly", "disk_id": 1,
                               "type": 1, "node": "tb", "zpool": lab.backup_pool, "schedule": "0 * * * *",
                               "retention": 0, "active": True, "compression": 0, "bwlimit": None, "desc": "",
                               "fsfreeze": False, "created": "2026-11-28T09:00:00.000Z",
                               "last_due": "2026-11-28T09:00:00.000Z"})
    assert Scheduler(app.service, app.data_dir).tick(utc(2026, 11, 28, 10, 0, 1)) == []
    log = [e for e in app.store.task_log() if e["object_name"] == vm.hostname]
    assert log and log[0]["msg"] == "Scheduled backup not started" and "VM is not operational" in log[0]["detail"]


def test_inactive_and_changed_definitions_take_effect_at_once(app, lab):
    vm = make_vm(lab, "change")
    seed(app.store, lab, vm)
    definition(app, lab, vm, last_due=utc(2026, 11, 28, 9, 30), active=False)
    assert Scheduler(app.service, app.data_dir).tick(utc(2026, 11, 28, 10, 0, 5)) == []
    app.service.definitions.update(SCHEDULER, vm.hostname, "hourly", {"active": True, "schedule": "0 0 1 1 *"})
    assert Scheduler(app.service, app.data_dir).tick() == []  # the new schedule counts from now
    app.service.definitions.delete(SCHEDULER, vm.hostname, "hourly", {})
    assert Scheduler(app.service, app.data_dir).tick() == []


def test_retention_keeps_exactly_n_and_the_next_incremental_works(app, lab):
    vm = make_vm(lab, "keep")
    seed(app.store, lab, vm)
    definition(app, lab, vm, name="keep2", retention=2)
    for _ in range(4):
        task_id = app.service.backups.create(SCHEDULER, vm.hostname, "keep2", {})
        assert app.service.tasks.wait(task_id, timeout=120)["status"] == "SUCCESS"
        for task in app.store.pending_tasks():  # the retention job
            assert app.service.tasks.wait(task["task_id"], timeout=120)["status"] == "SUCCESS"
        time.sleep(1.1)
    kept = sorted(b["name"] for b in app.store.backups(vm_uuid=vm.uuid))
    assert len(kept) == 2
    target = "%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)
    assert snapshots(target) == kept
    lab.write_data(vm.disk(lab.compute_pool, 0), "after.bin", 1)
    task_id = app.service.backups.create(SCHEDULER, vm.hostname, "keep2", {})
    assert app.service.tasks.wait(task_id, timeout=120)["status"] == "SUCCESS"
    newest = max(app.store.backups(vm_uuid=vm.uuid), key=lambda b: b["created"])
    assert 2**20 <= newest["size"] < 2 * 2**20  # incremental: only the new MiB went over


def test_a_node_job_limit_queues_the_rest(app, lab):
    app.service.queue.jobs_per_node = 1
    first, second = make_vm(lab, "q1"), make_vm(lab, "q2")
    for vm in (first, second):
        seed(app.store, lab, vm)
        definition(app, lab, vm, name="q", bwlimit=2000000)
    one = app.service.backups.create(SCHEDULER, first.hostname, "q", {})
    two = app.service.backups.create(SCHEDULER, second.hostname, "q", {})
    assert app.store.get_task(two)["queued"] is True and app.store.get_task(one)["queued"] is False
    assert app.service.tasks.wait(one, timeout=120)["status"] == "SUCCESS"
    assert app.service.tasks.wait(two, timeout=120)["status"] == "SUCCESS"
    assert app.store.get_task(one)["finished"] <= app.store.get_task(two)["launched"]


def test_a_live_server_runs_a_definition_due_next_minute_on_its_own(lab):
    env = new_env(lab)
    vm = make_vm(lab, "live")
    from vmbackup.store.store import Store
    store = Store(env.data_dir)
    for name, roles, pool in (("tc", ["compute"], lab.compute_pool), ("tb", ["backup"], lab.backup_pool)):
        store.upsert_node({"name": name, "roles": roles, "operational": True, "pools": {pool: {"free": 10**10}}})
    seed(store, lab, vm)
    del store
    env.add_user(*ADMIN, admin=True)
    env.serve_args = ["--no-discover", "--schedule-interval", "1"]
    env.start()
    try:
        client = env.client()
        due = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
        schedule = "%d %d * * *" % (due.minute, due.hour)
        assert client.post("vm/%s/define/backup/nightly" % vm.hostname, node="tb", zpool=lab.backup_pool,
                           schedule=schedule, retention=1).status == 201
        deadline = time.monotonic() + 150
        backups = []
        while time.monotonic() < deadline:
            backups = client.get("vm/%s/backup" % vm.hostname, full=True).result
            if backups and backups[0]["status"] == 1:
                break
            time.sleep(2)
        assert len(backups) == 1 and backups[0]["status"] == 1 and backups[0]["define"] == "nightly"
        time.sleep(3)
        assert len(client.get("vm/%s/backup" % vm.hostname).result) == 1  # once
    finally:
        env.stop()
        shutil.rmtree(env.data_dir, ignore_errors=True)


def test_definitions_due_together_run_as_one_batch_per_backup_node(app, lab):
    from conftest import destroy
    vms = [make_vm(lab, "batch%d" % i) for i in range(3)]
    for vm in vms:
        seed(app.store, lab, vm)
        definition(app, lab, vm, last_due=utc(2026, 11, 28, 9, 30))
    destroy(vms[2].disk(lab.compute_pool, 0))  # this one will fail; the others must not
    started = Scheduler(app.service, app.data_dir).tick(utc(2026, 11, 28, 10, 0, 5))
    assert len(started) == 1  # one run for the backup node tb
    task = app.service.tasks.wait(started[0], timeout=180)
    assert task["status"] == "SUCCESS" and "made=2, failed=1" in task["result"]["detail"], task["result"]["detail"]
    for vm in vms[:2]:
        (backup,) = app.store.backups(vm_uuid=vm.uuid)
        assert backup["status"] == 1 and backup["size"] > 4 * 2**20
        assert snapshots("%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)) == [backup["name"]]
    assert app.store.backups(vm_uuid=vms[2].uuid) == []
    assert not app.service.backups.busy(vms[0].uuid, 1)  # every disk is free again


def test_a_batch_is_spread_over_runs_by_compute_node():
    from vmbackup.app.backups import spread
    pairs = [({"n": i}, {"item": {"compute_node": node}}) for i, node in enumerate("AAAAABBBCC")]
    for runs, sizes in ((1, [10]), (2, [5, 5]), (3, [5, 3, 2]), (8, [5, 3, 2])):
        groups = spread(pairs, runs)
        assert sorted((len(g) for g in groups), reverse=True) == sizes, runs
        assert sorted(p[0]["n"] for g in groups for p in g) == list(range(10))  # each once
        for group in groups:  # a compute node's disks stay together
            nodes = {p[1]["item"]["compute_node"] for p in group}
            assert all(p[1]["item"]["compute_node"] not in nodes for g in groups if g is not group for p in g)
