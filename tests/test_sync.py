"""The nodes hold the truth: a sync marks backups whose data is gone LOST (and OK again when it is back),
a controller on an empty data dir finds every backup again and restores one, definitions travel as JSON,
and retention runs in the backup's own run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from api_env import ADMIN, BIN, make_vm, new_env
from conftest import dataset_checksums, destroy, zfs

from vmbackup.store.store import Store


def vmbackup(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "vmbackup"), *args, "--data-dir", env.data_dir, "--inventory",
                           env.inventory], capture_output=True, text=True, timeout=600, check=check)


@pytest.fixture(scope="module")
def env(lab):
    env = new_env(lab)
    env.vms = {"a": make_vm(lab, "synca"), "b": make_vm(lab, "syncb")}
    vmbackup(env, "discover")
    env.admin_key = env.add_user(*ADMIN, admin=True)
    env.serve_args = ["--no-scheduler", "--discover-every", "3600"]
    env.start()
    yield env
    env.stop()
    shutil.rmtree(env.data_dir, ignore_errors=True)


def backup(env, client, vm, definition: str) -> str:
    started = client.post("vm/%s/backup/%s" % (vm.hostname, definition))
    assert started.status == 201, started.body
    done = env.wait(client, started.task_id)
    assert done["code"] == 200, done
    return done["result"]["detail"].split(",")[0].split("=")[1]


def sync(env, client) -> dict:
    started = client.put("sync")
    assert started.status == 201, started.body
    done = env.wait(client, started.task_id)
    assert done["code"] == 200, done
    return done["result"]


def statuses(client, vm, definition: str) -> dict:
    return {b["name"]: b["status"] for b in client.get("vm/%s/backup" % vm.hostname, define=definition,
                                                           full=True).result}


def test_retention_has_run_when_the_backup_task_succeeds(env):
    client, vm = env.client(), env.vms["a"]
    assert client.post("vm/%s/define/backup/keep2" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                       schedule="0 4 * * *", retention=2).status == 201
    names = []
    for _ in range(3):
        names.append(backup(env, client, vm, "keep2"))
        time.sleep(1.1)
    assert sorted(statuses(client, vm, "keep2")) == sorted(names[1:])  # at once, no second job
    log = client.get("task/log").result
    assert any("pruned=%s" % names[0] in (e.get("detail") or "") for e in log)


def test_a_destroyed_backup_turns_lost_and_back_when_its_data_is_back(env):
    client, vm = env.client(), env.vms["b"]
    assert client.post("vm/%s/define/backup/lost" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                       schedule="0 4 * * *", retention=0).status == 201
    name = backup(env, client, vm, "lost")
    dataset = "%s/backups/ds/%s-disk0" % (env.lab.backup_pool, vm.uuid)
    props = {p: zfs("get", "-H", "-o", "value", p, "%s@%s" % (dataset, name)).strip()
             for p in ("vmbackup:backup", "vmbackup:define")}
    destroy("%s@%s" % (dataset, name))
    result = sync(env, client)
    assert statuses(client, vm, "lost") == {name: 4}, result
    args = []
    for prop, value in props.items():
        args += ["-o", "%s=%s" % (prop, value)]
    zfs("snapshot", *args, "%s@%s" % (dataset, name))  # the same data again (the dataset did not change)
    sync(env, client)
    assert statuses(client, vm, "lost") == {name: 1}


def test_a_new_controller_finds_every_backup_and_restores_one(env, lab):
    client, vm = env.client(), env.vms["a"]
    assert client.post("vm/%s/define/backup/fresh" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                       schedule="0 5 * * *", retention=0, type=2, compression="zstd").status == 201
    name = backup(env, client, vm, "fresh")
    before = {b["name"]: b for b in client.get("vm/%s/backup" % vm.hostname, full=True).result}
    exported = vmbackup(env, "definitions", "export").stdout

    other = new_env(lab)  # an empty data dir, the same nodes
    try:
        vmbackup(other, "discover")
        synced = vmbackup(other, "sync", "--no-discover")
        assert json.loads(synced.stdout)["status"] == "SUCCESS", synced.stdout
        with open(os.path.join(other.data_dir, "definitions.json"), "w") as handle:
            handle.write(exported)
        imported = json.loads(vmbackup(other, "definitions", "import",
                                       os.path.join(other.data_dir, "definitions.json")).stdout)
        assert imported["refused"] == [] and len(imported["imported"]) == len(json.loads(exported)["definitions"])
        other.add_user(*ADMIN, admin=True)
        other.serve_args = ["--no-scheduler", "--no-discover"]
        other.start()
        fresh = other.client()
        after = {b["name"]: b for b in fresh.get("vm/%s/backup" % vm.hostname, full=True).result}
        assert set(after) == {n for n, b in before.items() if b["status"] == 1}
        for key in ("define", "disk_id", "type", "hostname", "size"):
            assert after[name][key] == before[name][key], key
        same = {(d["name"], d["schedule"], d["retention"], d["compression"]) for d in
                fresh.get("vm/define/backup", full=True).result}
        assert same == {(d["name"], d["schedule"], d["retention"], d["compression"]) for d in
                        client.get("vm/define/backup", full=True).result}

        disk = vm.disk(lab.compute_pool, 0)
        good = dataset_checksums(disk)
        lab.write_data(disk, "after-backup.bin", 1)
        restore = fresh.put("vm/%s/backup/%s" % (vm.hostname, name), target_hostname_or_uuid=vm.hostname,
                            target_disk_id=1)
        assert restore.status == 201, restore.body
        assert other.wait(fresh, restore.task_id)["code"] == 200
        assert dataset_checksums(disk) == good
    finally:
        other.stop()
        shutil.rmtree(other.data_dir, ignore_errors=True)


def test_sync_changes_nothing_for_a_node_that_does_not_answer(env):
    store = Store(env.data_dir)
    before = {(b["vm_uuid"], b["name"]): b["status"] for b in store.backups()}
    from vmbackup.app import sync as syncmod
    from vmbackup.engine.runner import RunResult
    summary = syncmod.apply(store, [{"node": "tb", "pools": [env.lab.backup_pool]}], RunResult("failed", 2, {}))
    assert summary.unlisted == ["tb"] and summary.lost == []
    assert {(b["vm_uuid"], b["name"]): b["status"] for b in store.backups()} == before
