"""Nodes and VMs come from the nodes themselves: `vmbackup discover` and `serve` run nodes.yml and
discover.yml on the inventory; a node that does not answer is not operational; backups outlive
their VM and are found by the hostname they were made under.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from api_env import ADMIN, BIN, make_vm, new_env
from conftest import destroy

from vmbackup.store.store import Store


def discover(env) -> dict:
    out = subprocess.run([os.path.join(BIN, "vmbackup"), "discover", "--data-dir", env.data_dir, "--inventory",
                          env.inventory], capture_output=True, text=True, check=True, timeout=300).stdout
    return json.loads(out)


def test_discovery_then_backup_then_the_vm_goes_away(lab):
    env = new_env(lab)
    vm = make_vm(lab, "found", disks=2)
    try:
        summary = discover(env)
        assert summary["nodes"] == {"tc": True, "tb": True, "dead": False}
        store = Store(env.data_dir)
        found = store.get_vm(vm.hostname)
        assert found["uuid"] == vm.uuid and found["node"] == "tc" and found["state"] == "stopped"
        assert [d["disk_id"] for d in found["disks"]] == [1, 2]
        assert found["disks"][0]["dataset"] == vm.disk(lab.compute_pool, 0)
        assert found["disks"][0]["size"] == vm.size_mb * 2**20
        assert store.get_node("tb")["pools"][lab.backup_pool]["free"] > 0
        del store

        env.add_user(*ADMIN, admin=True)
        env.serve_args = ["--discover-every", "3600", "--no-scheduler"]
        env.start()
        client = env.client()
        assert client.post("vm/%s/define/backup/daily" % vm.hostname, node="tb", zpool=lab.backup_pool,
                           schedule="0 4 * * *", retention=3, disk_id=2).status == 201
        started = client.post("vm/%s/backup/daily" % vm.hostname, disk_id=2)
        assert started.status == 201, started.body
        assert env.wait(client, started.task_id)["code"] == 200
        env.stop()

        destroy(vm.disk(lab.compute_pool, 0))
        destroy(vm.disk(lab.compute_pool, 1))
        discover(env)
        env.start()
        client = env.client()
        assert client.get("vm/%s/define/backup" % vm.hostname).status == 404  # the VM is gone
        backups = client.get("vm/%s/backup" % vm.hostname, full=True).result
        assert len(backups) == 1 and backups[0]["vm"] is None and backups[0]["hostname"] == vm.hostname
        assert backups[0]["disk_id"] == 2
    finally:
        env.stop()
        shutil.rmtree(env.data_dir, ignore_errors=True)
