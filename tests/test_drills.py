"""Proven restores through the API: a drill proves a backup restorable and the backup shows when; a corrupted
one fails its drill, fires one signed webhook, turns `vmbackup check` critical and changes the metric; the
scheduler drills each definition's newest backup on its own, once per interval.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
from api_env import ADMIN, make_vm, new_env, seed, seed_nodes
from test_monitoring import SECRET, Receiver, samples, scrape, series, signed, vmbackup_check

from vmbackup.store.store import Store


@pytest.fixture(scope="module")
def receiver():
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def env(lab, receiver):
    from api_env import free_port
    env = new_env(lab)
    store = Store(env.data_dir)
    seed_nodes(store, lab)
    env.vms = {"d": make_vm(lab, "drill"), "s": make_vm(lab, "sched")}
    for vm in env.vms.values():
        seed(store, lab, vm)
    del store
    env.add_user(*ADMIN, admin=True)
    secret_file = os.path.join(env.data_dir, "webhook.secret")
    with open(secret_file, "wb") as handle:
        handle.write(SECRET + b"\n")
    env.metrics_port = free_port()
    # A drill every 0.0005 days (43 s): the first one 22 to 43 s after a definition is made.
    env.serve_args = ["--no-discover", "--schedule-interval", "1", "--verify-every-days", "0.0005",
                      "--metrics-listen", "127.0.0.1:%d" % env.metrics_port, "--webhook", receiver.url,
                      "--webhook-secret-file", secret_file]
    env.start()
    yield env
    env.stop()
    shutil.rmtree(env.data_dir, ignore_errors=True)


def made(env, client, vm, name: str, **data) -> str:
    body = {"node": "tb", "zpool": env.lab.backup_pool, "schedule": "0 4 * * *", "retention": 5}
    body.update(data)
    assert client.post("vm/%s/define/backup/%s" % (vm.hostname, name), **body).status == 201
    started = client.post("vm/%s/backup/%s" % (vm.hostname, name))
    done = env.wait(client, started.task_id)
    assert done["code"] == 200, done
    return done["result"]["detail"].split(",")[0].split("=")[1]


def drill(env, client, vm, bkpname: str) -> dict:
    started = client.put("vm/%s/backup/%s/verify" % (vm.hostname, bkpname))
    assert started.status == 201, started.body
    return env.wait(client, started.task_id)


def test_a_drill_proves_a_backup_and_a_corrupted_one_alerts_everywhere(env, receiver):
    client, vm = env.client(), env.vms["d"]
    good = made(env, client, vm, "dset", active=False)  # paused: only the drills of this test run
    done = drill(env, client, vm, good)
    assert done["code"] == 200 and done["result"]["message"] == "Backup successfully verified", done
    shown = client.get("vm/%s/backup/%s" % (vm.hostname, good)).result
    assert shown["verify_status"] == "passed" and shown["verified"]
    definition = client.get("vm/%s/define/backup/dset" % vm.hostname).result
    assert definition["verified"] == shown["verified"] and definition["verified_age"] >= 0

    name = made(env, client, vm, "file", type=2, compression=1, active=False)
    path = client.get("vm/%s/backup/%s" % (vm.hostname, name)).result["file_path"]
    before = samples(scrape(env.metrics_port, "/metrics")[2])
    with open(path, "r+b") as handle:  # flip bytes in the middle of the backup file
        handle.seek(os.path.getsize(path) // 2)
        chunk = handle.read(64)
        handle.seek(os.path.getsize(path) // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    failed = drill(env, client, vm, name)
    assert failed["code"] == 400 and "checksum" in failed["result"]["detail"], failed
    shown = client.get("vm/%s/backup/%s" % (vm.hostname, name)).result
    assert shown["verify_status"] == "failed" and shown["verified"] is None
    alerts = receiver.wait("drill_failed")
    assert len(alerts) == 1 and all(signed(r) for r in receiver.requests)
    assert client.put("vm/%s/define/backup/file" % vm.hostname, active=True).status == 200  # checks watch it now
    check = vmbackup_check(env, "--vm", vm.hostname, "--definition", "file", "--verify-warn-days", "1",
                           "--verify-crit-days", "2")
    assert check.returncode == 2 and check.stdout.startswith("VMBACKUP CRITICAL"), check.stdout
    after = samples(scrape(env.metrics_port, "/metrics")[2])
    labels = {"vm_uuid": vm.uuid, "definition": "file"}
    assert series(after, "vmbackup_last_verify_passed", **labels) == 0
    assert series(before, "vmbackup_last_verify_passed", **labels) != 0


def test_the_scheduler_drills_the_newest_backup_once_per_interval(env):
    client, vm = env.client(), env.vms["s"]
    name = made(env, client, vm, "auto")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        backup = client.get("vm/%s/backup/%s" % (vm.hostname, name)).result
        if backup["verify_status"]:
            break
        time.sleep(1)
    assert backup["verify_status"] == "passed", backup
    drills = [e for e in client.get("task/log").result if e.get("msg", "").startswith("Backup successfully verified")
              and e.get("object_name") == vm.hostname]
    assert len(drills) == 1
