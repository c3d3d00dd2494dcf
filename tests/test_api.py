"""The REST API as clients see it: a real `vmbackup serve` process over HTTP, running the real
playbooks against the lab's pools. Nodes and VMs are recorded as discovery records them (the states
the lab cannot show, like a locked VM, are recorded directly and say so).
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from api_env import ADMIN, OWNER, make_vm, new_env, seed, seed_nodes
from conftest import dataset_checksums, snapshots, zfs

from vmbackup.cli.client import Client
from vmbackup.store.store import Store


@pytest.fixture(scope="module")
def env(lab):
    env = new_env(lab)
    store = Store(env.data_dir)
    seed_nodes(store, lab)
    store.upsert_node({"name": "dead", "roles": ["compute"], "operational": False, "pools": {}})
    store.upsert_node({"name": "deadb", "roles": ["backup"], "operational": False, "pools": {"zones": {}}})
    vms = {
        "a": make_vm(lab, "alpha", disks=2), "b": make_vm(lab, "beta"), "bhyve": make_vm(lab, "gamma", brand="bhyve"),
        "running": make_vm(lab, "delta", state="running"), "small": make_vm(lab, "eps", size_mb=128),
        "locked": make_vm(lab, "zeta"), "uninstalled": make_vm(lab, "eta"), "dead": make_vm(lab, "theta"),
        "snap": make_vm(lab, "iota"),
    }
    for key, vm in vms.items():
        seed(store, lab, vm, node="dead" if key == "dead" else "tc", locked=key == "locked",
             installed=key != "uninstalled")
    zfs("snapshot", vms["snap"].disk(lab.compute_pool, 0) + "@manual")
    seed(store, lab, vms["snap"], snapshots=1)
    vm_a = vms["a"]
    env.vms = vms
    env.admin_key = env.add_user(*ADMIN, admin=True)
    env.add_user(*OWNER, vms=[vm_a.hostname])
    del store
    env.serve_args = ["--no-discover"]
    env.start()
    yield env
    env.stop()
    shutil.rmtree(env.data_dir, ignore_errors=True)


def define(client: Client, vm, name: str = "daily", **data) -> dict:
    """A definition on the test backup node `tb` and its pool (the lab's backup pool)."""
    body = {"node": "tb", "zpool": client.backup_pool, "schedule": "0 4 * * *", "retention": 5}
    body.update(data)
    response = client.post("vm/%s/define/backup/%s" % (vm.hostname, name), **body)
    assert response.status == 201, response.body
    return response.result


# -- authentication -------------------------------------------------------------------------------
def test_every_route_but_login_needs_credentials(env):
    anonymous = Client(env.url)
    response = anonymous.get("vm/define/backup")
    assert response.status == 403 and response.body == {"detail": "Authentication credentials were not provided."}
    bad = Client(env.url, token="nope")
    assert bad.get("task").status == 403 and bad.get("task").body["detail"] == "Invalid token."
    assert anonymous.login("admin", "wrong").status == 400
    keyed = Client(env.url, api_key=env.admin_key)
    assert keyed.get("task").status == 200
    client = env.client()
    assert client.get("accounts/logout").status == 200
    assert client.get("task").status == 403  # the token ended


def test_responses_carry_es_headers_and_the_task_envelope(env):
    response = env.client().get("vm/define/backup")
    assert response.status == 200 and response.headers["es_username"] == "admin"
    assert response.headers["es_version"] and response.headers["es_task_id"] == response.task_id
    assert set(response.body) == {"task_id", "status", "result"} and response.body["status"] == "SUCCESS"
    assert response.task_id.startswith("1d1d1-") and len(response.task_id.split("-")) == 5


def test_trailing_slash_is_optional(env):
    client = env.client()
    assert client.request("GET", "vm/define/backup").status == 200  # the client adds the slash
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", env.port)
    conn.request("GET", "/api/vm/define/backup", headers={"Authorization": "Token " + client.token})
    assert conn.getresponse().status == 200


# -- definitions ----------------------------------------------------------------------------------
def test_definition_create_read_update_delete(env):
    client, vm = env.client(), env.vms["b"]
    created = define(client, vm, "nightly", disk_id="1", active="false", bwlimit="1000000", desc="night run")
    assert created["active"] is False and created["bwlimit"] == 1000000 and created["hostname"] == vm.hostname
    assert created["keep_snapshot"] is True  # the extension's default: the compute node keeps the base
    assert client.post("vm/%s/define/backup/nightly" % vm.hostname, node="tb", schedule="0 4 * * *",
                       retention=3).status == 406
    path = "vm/%s/define/backup/nightly" % vm.hostname
    assert client.get(path).result["desc"] == "night run"
    updated = client.put(path, retention="7", active="true")
    assert updated.status == 200 and updated.result["retention"] == 7 and updated.result["active"] is True
    assert client.put(path, keep_snapshot="false").result["keep_snapshot"] is False
    assert client.get(path).result["keep_snapshot"] is False and client.get(path).result["retention"] == 7
    bad = client.put(path, keep_snapshot="sometimes")
    assert bad.status == 400 and set(bad.result) == {"keep_snapshot"}, bad.body
    assert client.put(path, type=2).status == 400  # the type stays
    assert client.get("vm/%s/define/backup" % vm.hostname).result == ["nightly"]
    extended = client.get("vm/%s/define/backup" % vm.hostname, extended="true").result
    assert extended[0]["backups"] == 0
    deleted = client.delete(path)
    assert deleted.status == 200 and deleted.result is None
    assert client.get(path).status == 404 and client.delete(path).body == {"detail": "Backup definition not found"}


def test_predefined_names_fill_schedule_and_retention(env):
    client, vm = env.client(), env.vms["b"]
    response = client.post("vm/%s/define/backup/weekly" % vm.hostname, node="tb", zpool=env.lab.backup_pool)
    assert response.status == 201, response.body
    minute, hour, day, month, weekday = response.result["schedule"].split()
    assert response.result["retention"] == 12 and day == "*" and month == "*" and 0 <= int(weekday) <= 6
    client.delete("vm/%s/define/backup/weekly" % vm.hostname)


def test_definition_validation_names_the_fields(env):
    client, vm = env.client(), env.vms["b"]
    response = client.post("vm/%s/define/backup/custom" % vm.hostname, node="tb", zpool=env.lab.backup_pool)
    assert response.status == 400 and response.body["status"] == "FAILURE"
    assert set(response.result) == {"schedule", "retention"}
    assert "zpool" in client.post("vm/%s/define/backup/custom" % vm.hostname, node="tb").result  # zones: not there
    bad = client.post("vm/%s/define/backup/custom" % vm.hostname, node="tb", schedule="61 * * * *",
                      retention="many", desc="<script>", compression=9, zpool="nopool")
    assert bad.status == 400 and {"schedule", "retention", "desc", "compression", "zpool"} <= set(bad.result)
    not_backup = client.post("vm/%s/define/backup/custom" % vm.hostname, node="tc", schedule="0 4 * * *",
                             retention=1, zpool=env.lab.backup_pool)
    assert not_backup.result == {"node": ["Object with name=tc does not exist or is not a backup node."]}
    assert client.post("vm/%s/define/backup/waytoolongname" % vm.hostname, node="tb").status == 400
    assert client.get("vm/%s/define/backup" % vm.hostname, full="maybe").status == 400


def test_definition_refusals(env):
    client = env.client()
    assert client.get("vm/nosuch.lab/define/backup").body == {"detail": "VM not found"}
    assert client.post("vm/nosuch.lab/define/backup/daily", node="tb").status == 404
    assert client.post("vm/%s/define/backup/daily" % env.vms["b"].hostname, node="tb", disk_id=5).body == \
        {"detail": "Invalid disk_id"}
    assert client.get("vm/%s/define/backup" % env.vms["b"].hostname, disk_id=9).status == 412
    assert client.get("vm/%s/define/backup/daily" % env.vms["b"].hostname, disk_id="x").status == 412
    dead = client.post("vm/%s/define/backup/daily" % env.vms["dead"].hostname, node="tb", schedule="0 4 * * *",
                       retention=1)
    assert dead.status == 423 and dead.body == {"detail": "Node is not operational"}
    assert client.get("vm/define/backup", order_by="size").status == 412
    assert "Possible sort fields are: name, disk_id, hostname, created" in \
        client.get("vm/define/backup", order_by="size").body["detail"]


def test_vm_owner_may_only_read_its_own_vms(env):
    admin, owner = env.client(), env.client(OWNER)
    mine, other = env.vms["a"], env.vms["b"]
    define(admin, mine, "owned")
    define(admin, other, "other")
    assert owner.get("vm/%s/define/backup" % mine.hostname).result == ["owned"]
    assert owner.get("vm/%s/define/backup" % other.hostname).status == 404
    assert [d["hostname"] for d in owner.get("vm/define/backup", full=True).result] == [mine.hostname]
    assert owner.post("vm/%s/define/backup/x" % mine.hostname, node="tb").body == {"detail": "Permission denied"}
    assert owner.post("vm/%s/backup/owned" % mine.hostname).status == 403
    admin.delete("vm/%s/define/backup/owned" % mine.hostname)
    admin.delete("vm/%s/define/backup/other" % other.hostname)


def test_list_all_definitions_orders_and_extends(env):
    client = env.client()
    define(client, env.vms["b"], "zz1")
    define(client, env.vms["a"], "aa1")
    names = client.get("vm/define/backup", order_by="name").result
    assert names.index("aa1") < names.index("zz1")
    full = client.get("vm/define/backup", order_by="-name", full=True).result
    assert [d["name"] for d in full][:2] == ["zz1", "aa1"] or [d["name"] for d in full].index("zz1") < \
        [d["name"] for d in full].index("aa1")
    client.delete("vm/%s/define/backup/zz1" % env.vms["b"].hostname)
    client.delete("vm/%s/define/backup/aa1" % env.vms["a"].hostname)


# -- backups: the whole life of a dataset and a file backup ----------------------------------------
def create(env, client, vm, definition: str, **data) -> dict:
    response = client.post("vm/%s/backup/%s" % (vm.hostname, definition), **data)
    assert response.status == 201 and response.body["status"] == "PENDING" and response.result is None, \
        response.body
    done = env.wait(client, response.task_id)
    assert done["code"] == 200 and done["result"]["message"] == "Backup successfully created", done
    return done


@pytest.mark.parametrize("kind,compression", [(1, 0), (2, 1)])
def test_define_create_list_note_restore_delete(env, kind, compression):
    client, lab = env.client(), env.lab
    vm, other = env.vms["a"], env.vms["b"]
    name = "life%d" % kind
    define(client, vm, name, type=kind, compression=compression)
    disk = vm.disk(lab.compute_pool, 0)
    at_backup = dataset_checksums(disk)
    done = create(env, client, vm, name, note="first")
    bkpname = done["result"]["detail"].split(",")[0].split("=")[1]
    listed = client.get("vm/%s/backup" % vm.hostname, define=name).result
    assert listed == [bkpname]
    # What the job made, as data beside the detail's text (additive): the task and its log line say the same.
    outcome = client.get("task/%s" % done["task_id"]).result["outcome"]
    assert outcome["failed"] == [] and [(m["vm_uuid"], m["disk_id"], m["name"], m["define"])
                                        for m in outcome["made"]] == [(vm.uuid, 1, bkpname, name)]
    logged = [e for e in client.get("task/log").result if e["task"] == done["task_id"]]
    assert [e["outcome"] for e in logged] == [outcome]
    backup = client.get("vm/%s/backup/%s" % (vm.hostname, bkpname)).result
    assert backup["status"] == 1 and backup["size"] > 4 * 2**20 and backup["note"] == "first"
    assert backup["vm"] == vm.hostname and backup["created"].endswith("Z") and backup["define"] == name
    if kind == 2:
        assert backup["file_path"].endswith(".zfs.gz") and len(backup["checksum"]) == 64
    assert client.put("vm/%s/backup/%s" % (vm.hostname, bkpname), note="kept").result["note"] == "kept"

    lab.write_data(disk, "after-backup.bin", 2)
    assert dataset_checksums(disk) != at_backup
    restored = client.put("vm/%s/backup/%s" % (vm.hostname, bkpname), target_hostname_or_uuid=vm.hostname,
                          target_disk_id=1)
    assert restored.status == 201, restored.body
    status = env.wait(client, restored.task_id)
    assert status["code"] == 200 and status["result"]["message"] == "Backup successfully restored", status
    assert dataset_checksums(disk) == at_backup
    assert client.get("vm/%s/backup/%s" % (vm.hostname, bkpname)).result["status"] == 1

    into_other = client.put("vm/%s/backup/%s" % (vm.hostname, bkpname), target_hostname_or_uuid=other.hostname,
                            target_disk_id="1")
    assert env.wait(client, into_other.task_id)["code"] == 200
    assert dataset_checksums(other.disk(lab.compute_pool, 0)) == at_backup

    deleted = client.delete("vm/%s/backup/%s" % (vm.hostname, bkpname))
    assert deleted.status == 201
    assert env.wait(client, deleted.task_id)["result"]["message"] == "Backup successfully deleted"
    assert client.get("vm/%s/backup" % vm.hostname, define=name).result == []
    assert client.get("vm/%s/backup/%s" % (vm.hostname, bkpname)).status == 404
    if kind == 1:
        target = "%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)
        assert bkpname not in snapshots(target)
    else:
        assert not os.path.exists(backup["file_path"])
    client.delete("vm/%s/define/backup/%s" % (vm.hostname, name))


def test_backup_refusals(env):
    client, vm = env.client(), env.vms["b"]
    assert client.post("vm/nosuch.lab/backup/daily").body == {"detail": "VM not found"}
    assert client.post("vm/%s/backup/daily" % env.vms["dead"].hostname).status == 423
    assert client.post("vm/%s/backup/daily" % vm.hostname, disk_id=3).body == {"detail": "Invalid disk_id"}
    assert client.post("vm/%s/backup/nodef" % vm.hostname).body == {"detail": "Backup definition not found"}
    assert client.post("vm/%s/backup/daily" % vm.hostname, note="x" * 200).status in (400, 404)
    define(client, env.vms["uninstalled"], "daily")
    assert client.post("vm/%s/backup/daily" % env.vms["uninstalled"].hostname).body == \
        {"detail": "VM is not installed"}
    define(client, vm, "deadbn", node="deadb", zpool="zones")
    assert client.post("vm/%s/backup/deadbn" % vm.hostname).body == {"detail": "Node is not operational"}
    assert client.get("vm/%s/backup" % vm.hostname, disk_id="x").status == 412
    assert client.get("vm/%s/backup" % vm.hostname, order_by="hostname").status == 412
    assert client.get("vm/%s/backup/nosuch-20260101_000000" % vm.hostname).status == 404


def test_one_job_per_disk_and_the_same_name_twice(env):
    client, vm = env.client(), env.vms["b"]
    define(client, vm, "slow", bwlimit=1000000)
    first = client.post("vm/%s/backup/slow" % vm.hostname)
    assert first.status == 201
    second = client.post("vm/%s/backup/slow" % vm.hostname)
    # Within the same second the name is taken (406); later the disk is busy (409).
    assert (second.status, second.body) in ((406, {"detail": "Backup already exists"}),
                                            (409, {"detail": "VM has pending tasks"}))
    time.sleep(1.1)
    third = client.post("vm/%s/backup/slow" % vm.hostname)
    assert third.status == 409 and third.body == {"detail": "VM has pending tasks"}
    assert first.task_id in client.get("task").result
    info = client.get("task/%s" % first.task_id).result
    assert info["method"] == "POST" and info["hostname"] == vm.hostname and info["disk_id"] == 1
    assert client.get("task/%s/done" % first.task_id).body == {"task_id": first.task_id, "done": False}
    pending = client.get("vm/%s/backup" % vm.hostname, full=True, define="slow").result
    assert pending[0]["status"] == 2
    bkpname = pending[0]["name"]
    refused = client.put("vm/%s/backup/%s" % (vm.hostname, bkpname), target_hostname_or_uuid=vm.hostname,
                         target_disk_id=1)
    assert (refused.status, refused.body) == (417, {"detail": "VM backup status is not OK"})
    for refused in (client.delete("vm/%s/backup/%s" % (vm.hostname, bkpname)),
                    client.delete("vm/%s/backup" % vm.hostname, bkpnames=[bkpname])):
        assert (refused.status, refused.body) == (417, {"detail": "VM backup status is not OK"})
    env.wait(client, first.task_id)
    assert client.get("task/%s/done" % first.task_id).body["done"] is True
    assert client.put("task/%s/cancel" % first.task_id).status == 406


def test_cancel_a_running_backup(env):
    client, vm = env.client(), env.vms["small"]
    define(client, vm, "cancel", bwlimit=500000)
    started = client.post("vm/%s/backup/cancel" % vm.hostname)
    env.wait_for_bytes(client, started.task_id, 2**20)  # the transfer runs
    assert client.put("task/%s/cancel" % started.task_id).status == 200
    status = env.wait(client, started.task_id)
    assert status["code"] == 400 and status["status"] == "FAILURE"
    assert client.get("vm/%s/backup" % vm.hostname, define="cancel").result == []  # the record is gone
    assert client.get("task/nosuch-task").status == 404
    log = client.get("task/log").result
    assert any(entry["task"] == started.task_id and entry["status"] == "FAILURE" for entry in log)


def test_restore_refusals(env):
    client, lab = env.client(), env.lab
    vm = env.vms["a"]
    define(client, vm, "rr")
    done = create(env, client, vm, "rr")
    bkpname = done["result"]["detail"].split(",")[0].split("=")[1]
    path = "vm/%s/backup/%s" % (vm.hostname, bkpname)
    assert client.put(path, target_disk_id=1).result == {"target_hostname_or_uuid": ["This field is required."]}
    assert client.put(path, target_hostname_or_uuid="nosuch.lab", target_disk_id=1).body == {"detail": "VM not found"}
    cases = [("dead", 1, 423, "Node is not operational"), ("locked", 1, 423, "VM is locked or has slave VMs"),
             ("bhyve", 1, 428, "VM brand mismatch"), ("b", 7, 412, "Invalid target_disk_id"),
             ("small", 1, 428, "Disk size mismatch"), ("running", 1, 423, "VM is not stopped")]
    for key, disk, code, detail in cases:
        response = client.put(path, target_hostname_or_uuid=env.vms[key].hostname, target_disk_id=disk)
        assert (response.status, response.body) == (code, {"detail": detail}), key
    snap = env.vms["snap"]
    refused = client.put(path, target_hostname_or_uuid=snap.hostname, target_disk_id=1, force="false")
    assert refused.status == 417 and refused.body == {"detail": "VM has snapshots"}
    assert snapshots(snap.disk(lab.compute_pool, 0)) == ["manual"]
    assert client.put("vm/%s/backup/nosuch-20260101_000000" % vm.hostname, target_hostname_or_uuid=vm.hostname,
                      target_disk_id=1).status == 404


def test_bulk_delete(env):
    client, vm = env.client(), env.vms["b"]
    define(client, vm, "bulk")
    names = []
    for _ in range(2):
        done = create(env, client, vm, "bulk")
        names.append(done["result"]["detail"].split(",")[0].split("=")[1])
        time.sleep(1.1)
    refused = client.delete("vm/%s/backup" % vm.hostname, bkpnames=[])
    assert (refused.status, refused.body) == (412, {"detail": "Invalid bkpnames"})
    refused = client.delete("vm/%s/backup" % vm.hostname, bkpnames=["nosuch"])
    assert (refused.status, refused.body) == (404, {"detail": "Backup not found"})
    target = "%s/backups/ds/%s-disk0" % (env.lab.backup_pool, vm.uuid)
    assert set(names) <= set(snapshots(target))
    response = client.delete("vm/%s/backup" % vm.hostname, bkpnames=names)
    assert response.status == 201
    assert env.wait(client, response.task_id)["result"]["message"] == "Backups successfully deleted"
    assert client.get("vm/%s/backup" % vm.hostname, define="bulk").result == []
    assert not set(names) & set(snapshots(target))  # gone from the pool, not only from the records


def test_lost_backup_is_removed_from_the_records_at_once(env):
    client, vm = env.client(), env.vms["b"]
    define(client, vm, "lost")
    done = create(env, client, vm, "lost")
    bkpname = done["result"]["detail"].split(",")[0].split("=")[1]
    env.stop()
    Store(env.data_dir).update_backup(vm.uuid, 1, bkpname, {"status": 4})  # as when its data went missing
    env.start()
    client = env.client()
    response = client.delete("vm/%s/backup/%s" % (vm.hostname, bkpname))
    assert response.status == 200 and response.result == {"message": "Backup successfully deleted from DB"}


def test_size_limit_refuses_new_backups(env, lab):
    other = new_env(lab)
    store = Store(other.data_dir)
    for name, roles, pool in (("tc", ["compute"], lab.compute_pool), ("tb", ["backup"], lab.backup_pool)):
        store.upsert_node({"name": name, "roles": roles, "operational": True, "pools": {pool: {"free": 10**10}}})
    vm = env.vms["b"]
    seed(store, lab, vm)
    store.insert_backup({"hostname": vm.hostname, "vm_uuid": vm.uuid, "define": "x", "name": "x-20260101_000000",
                         "disk_id": 1, "type": 1, "node": "tb", "zpool": lab.backup_pool, "status": 1,
                         "size": 5000, "created": "2026-01-01T00:00:00.000Z"})
    del store
    other.add_user(*ADMIN, admin=True)
    other.serve_args = ["--no-discover", "--size-limit", "1000"]
    other.start()
    try:
        client = other.client()
        define(client, vm, "limit")
        assert client.post("vm/%s/backup/limit" % vm.hostname).body == {"detail": "DC backup size limit reached"}
    finally:
        other.stop()
        shutil.rmtree(other.data_dir, ignore_errors=True)


def test_a_restart_during_a_job_finds_the_job_again(env):
    client, vm = env.client(), env.vms["b"]
    define(client, vm, "restart", bwlimit=1000000)
    env.lab.write_data(vm.disk(env.lab.compute_pool, 0), "for-restart.bin", 6)  # about 6 s at 1 MB/s
    started = client.post("vm/%s/backup/restart" % vm.hostname)
    assert started.status == 201
    env.wait_for_bytes(client, started.task_id, 2**20)  # the transfer runs
    assert client.get("task/%s/done" % started.task_id).body["done"] is False
    env.stop(signal.SIGTERM)
    env.start()
    client = env.client()
    status = env.wait(client, started.task_id)
    assert status["code"] == 200, status
    backups = client.get("vm/%s/backup" % vm.hostname, define="restart", full=True).result
    assert [b["status"] for b in backups] == [1] and backups[0]["size"] > 6 * 2**20


def test_a_backup_answered_just_before_the_service_is_killed_is_made(env):
    """The 201 comes once the backup's record and task are on disk (one journal line; the files come at the
    next checkpoint): a SIGKILL right after it loses neither, and the next service finishes the job."""
    client, vm = env.client(), env.vms["b"]
    define(client, vm, "killed")
    started = client.post("vm/%s/backup/killed" % vm.hostname)
    env.stop(signal.SIGKILL)
    assert started.status == 201
    env.start()
    client = env.client()
    status = env.wait(client, started.task_id)
    assert status["code"] == 200, status
    backups = client.get("vm/%s/backup" % vm.hostname, define="killed", full=True).result
    assert [b["status"] for b in backups] == [1]


def test_openapi_describes_every_route(env):
    spec = env.client().get("openapi.json")
    assert spec.status == 200
    paths = spec.body["paths"]
    assert set(paths["/api/vm/{hostname_or_uuid}/backup/{bkpname}"]) == {"get", "post", "put", "delete"}
    assert "/api/task/{task_id}/cancel" in paths and "/api/vm/define/backup" in paths
    post = paths["/api/vm/{hostname_or_uuid}/backup/{bkpname}"]["post"]
    assert {"201", "404", "406", "409", "412", "417", "423", "428"} <= set(post["responses"])


def test_remaining_status_codes_of_the_seed(env):
    """The codes the other tests do not reach on their way: each endpoint's list in the seed, complete."""
    client, owner, lab = env.client(), env.client(OWNER), env.lab
    vm, mine, dead = env.vms["b"], env.vms["a"], env.vms["dead"]
    define(client, vm, "codes")
    path = "vm/%s/define/backup/codes" % vm.hostname
    # PUT and DELETE of a definition
    assert owner.put("vm/%s/define/backup/x" % mine.hostname, retention=1).status == 403
    assert client.put(path, disk_id=9, retention=1).status == 412
    assert client.put(path, retention="-1").status == 400
    assert client.put("vm/%s/define/backup/nope" % vm.hostname, retention=1).status == 404
    assert client.put("vm/%s/define/backup/codes" % dead.hostname, retention=1).status == 423
    assert owner.delete(path).status == 403
    assert client.delete(path, disk_id=9).status == 412
    assert client.delete("vm/%s/define/backup/codes" % dead.hostname).status == 423
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", env.port)
    conn.request("DELETE", "/api/" + path + "/", body="{not json",
                 headers={"Authorization": "Token " + client.token, "Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 400 and json_of(reply)["status"] == "FAILURE"
    # POST backup: a note that is too long
    assert client.post("vm/%s/backup/codes" % vm.hostname, note="x" * 129).result == \
        {"note": ["Ensure this field has no more than 128 characters."]}
    # GET/DELETE of one backup with a disk_id that is not a number
    assert client.get("vm/%s/backup/codes-20260101_000000" % vm.hostname, disk_id="x").status == 412
    assert client.delete("vm/%s/backup/codes-20260101_000000" % vm.hostname, disk_id="x").status == 412
    # a backup whose backup node does not answer: 423 for single and bulk deletes
    env.stop()
    Store(env.data_dir).insert_backup({
        "hostname": vm.hostname, "vm_uuid": vm.uuid, "define": "codes", "name": "codes-20260101_000000",
        "disk_id": 1, "type": 1, "node": "deadb", "zpool": "zones", "created": "2026-01-01T00:00:00.000Z",
        "status": 1, "size": 1, "time": 1, "file_path": None, "note": ""})
    env.start()
    client = env.client()
    one = client.delete("vm/%s/backup/codes-20260101_000000" % vm.hostname)
    assert (one.status, one.body) == (423, {"detail": "Node is not operational"})
    assert client.delete("vm/%s/backup" % vm.hostname, bkpnames=["codes-20260101_000000"]).status == 423
    # a restore into a disk that has a job running: 409
    made = create(env, client, vm, "codes")
    bkpname = made["result"]["detail"].split(",")[0].split("=")[1]
    define(client, mine, "busy", bwlimit=500000)
    lab.write_data(mine.disk(lab.compute_pool, 0), "busy.bin", 3)  # about 6 s at 0.5 MB/s
    job = client.post("vm/%s/backup/busy" % mine.hostname)
    assert job.status == 201
    restore = client.put("vm/%s/backup/%s" % (vm.hostname, bkpname), target_hostname_or_uuid=mine.hostname,
                         target_disk_id=1)
    assert (restore.status, restore.body) == (409, {"detail": "VM has pending tasks"})
    assert env.wait(client, job.task_id)["code"] == 200


def test_a_second_service_on_the_data_dir_sees_the_claims_of_the_first(env):
    """Claims live in the store with their tasks: a second `serve` on the same data dir refuses a backup of
    a disk the first one is backing up (409), and takes it once that job ended."""
    from api_env import ApiEnv
    lab, vm = env.lab, env.vms["a"]
    client = env.client()
    define(client, vm, "slow", disk_id=2, bwlimit=500000)
    define(client, vm, "other", disk_id=2)
    lab.write_data(vm.disk(lab.compute_pool, 1), "slow.bin", 3)  # about 6 s at 0.5 MB/s
    second = ApiEnv(lab, env.data_dir, env.inventory, serve_args=["--no-discover"])
    second.start()
    try:
        other = second.client()
        job = client.post("vm/%s/backup/slow" % vm.hostname, disk_id=2)
        assert job.status == 201
        refused = other.post("vm/%s/backup/other" % vm.hostname, disk_id=2)
        assert (refused.status, refused.body) == (409, {"detail": "VM has pending tasks"})
        assert other.post("vm/%s/backup/other" % vm.hostname, disk_id=1).status == 404  # no such definition there
        assert env.wait(client, job.task_id)["code"] == 200
        taken = other.post("vm/%s/backup/other" % vm.hostname, disk_id=2)
        assert taken.status == 201, taken.body
        assert second.wait(other, taken.task_id)["code"] == 200
    finally:
        second.stop()


def json_of(reply) -> dict:
    import json
    return json.loads(reply.read())
