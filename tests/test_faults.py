"""Faults on a lab of separate nodes, through the playbooks run for real over ssh: a link cut during an
incremental and a file backup and during a restore (during a full one: tests/test_nodes.py, on netlab and on
the OpenZFS lab), the compute node's zfs-fuse killed mid-send, and a node that stops answering the API's
discovery.

What must hold after each: no partial file, no half-received dataset or extra snapshot on the backup node, the
target of a restore byte-identical, and the next backup succeeds (incremental where a base exists). A snapshot
the failed run could not drop from an unreachable compute node is dropped by the next backup of its definition.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from types import SimpleNamespace

import pytest
from api_env import ADMIN, ApiEnv
from node_env import Run, backup_state, cut_midway, playbook, said, snapshots, wait_for_bytes
from node_env import new_vm as make_vm

BWLIMIT = 2_000_000  # bytes/s: 10 MiB take 5 s, time enough to cut the link midway
DATA_MB = 10

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, veths and zfs-fuse need root")


def new_vm(node, data_mb: int = DATA_MB):
    return make_vm(node, data_mb)


def test_link_cut_during_an_incremental_send(netlab, progress):
    compute, backup = netlab.node("compute"), netlab.node("backup")
    vm = new_vm(compute, data_mb=1)
    disk = vm.disk(compute.pools[0], 0)
    playbook(netlab, "backup.yml", hostname=vm.hostname, bkpdef="incr")
    base = snapshots(compute, disk)
    compute.write_data(disk, "more.bin", DATA_MB)
    before = backup_state(backup, vm)
    run = Run(netlab, "backup.yml", progress, hostname=vm.hostname, bkpdef="incr", bwlimit=BWLIMIT)
    out = cut_midway(compute, run, progress)
    assert "transfer failed" in out, out[-4000:]
    assert backup_state(backup, vm) == before  # the backup dataset has its one snapshot, nothing more
    left = snapshots(compute, disk)
    assert left == base or "FAILED to destroy new source snapshot" in out, out[-4000:]

    out = playbook(netlab, "backup.yml", hostname=vm.hostname, bkpdef="incr")
    assert "as an incremental backup from @%s" % base[0] in said(out), out[-3000:]
    newest = snapshots(compute, disk)
    assert len(newest) == 1 and newest[0] not in left + base


def test_link_cut_during_a_file_backup(netlab, progress):
    compute, backup = netlab.node("compute"), netlab.node("backup")
    vm = new_vm(compute)
    disk = vm.disk(compute.pools[0], 0)
    run = Run(netlab, "backup.yml", progress, hostname=vm.hostname, bkpdef="file", type=2, compression="zstd",
              bwlimit=BWLIMIT)
    out = cut_midway(compute, run, progress)
    assert "transfer failed" in out, out[-4000:]
    after = backup_state(backup, vm)
    assert not [f for f in after["files"] if f.endswith((".zst", ".json")) or ".part-" in f], after
    left = snapshots(compute, disk)
    assert left == [] or "FAILED to destroy new source snapshot" in out, out[-4000:]

    out = playbook(netlab, "backup.yml", hostname=vm.hostname, bkpdef="file", type=2, compression="zstd")
    assert "as a file backup" in said(out), out[-3000:]
    assert snapshots(compute, disk) == []  # a file backup keeps no snapshot; the failed run's went too
    files = backup_state(backup, vm)["files"]
    assert len([f for f in files if f.endswith("-full.zfs.zst")]) == 1, files


def test_compute_zfs_killed_mid_send(netlab, progress):
    compute, backup = netlab.node("compute"), netlab.node("backup")
    vm = new_vm(compute)
    disk = vm.disk(compute.pools[0], 0)
    sums = compute.checksums(disk)
    before = backup_state(backup, vm)
    run = Run(netlab, "backup.yml", progress, hostname=vm.hostname, bkpdef="crash", bwlimit=BWLIMIT)
    wait_for_bytes(run, progress, 2 << 20)
    compute.kill_zfs()
    rc, out = run.wait(120)
    assert rc != 0 and "transfer failed" in out, out[-4000:]
    compute.start_zfs()  # imports its pools from its own zpool.cache
    assert compute.exists(disk) and compute.checksums(disk) == sums
    assert backup_state(backup, vm) == before
    left = snapshots(compute, disk)
    assert left == [] or "FAILED to destroy new source snapshot" in out, out[-4000:]

    out = playbook(netlab, "backup.yml", hostname=vm.hostname, bkpdef="crash")
    assert "as a full backup" in said(out), out[-3000:]
    newest = snapshots(compute, disk)
    assert len(newest) == 1 and newest[0] not in left


@pytest.mark.parametrize("down_for", [15, None], ids=["back-within-a-minute", "down-until-the-run-ends"])
def test_link_cut_during_a_restore_leaves_the_target_disk_as_it_was(netlab, progress, down_for):
    """The backup is received beside the disk, which is only swapped once the copy is complete: a link cut
    in the transfer leaves the disk in its place however long it stays down (the restore waits a minute to
    destroy its partial copy; after that it names it)."""
    compute = netlab.node("compute")
    vm = new_vm(compute)
    disk = vm.disk(compute.pools[0], 0)
    playbook(netlab, "backup.yml", hostname=vm.hostname, bkpdef="rst")
    bkpname = snapshots(compute, disk)[0]
    compute.write_data(disk, "after-the-backup.bin", 2)  # what a finished restore would take away
    sums = compute.checksums(disk)
    datasets = [n for n in compute.zfs("list", "-H", "-o", "name", "-t", "all").split() if vm.uuid in n]
    run = Run(netlab, "restore.yml", progress, hostname=vm.hostname, bkpname=bkpname,
              target_hostname=vm.hostname, target_disk_id=1, bwlimit=BWLIMIT)
    out = cut_midway(compute, run, progress, down_for=down_for, wait=240)
    assert "transfer failed" in out and "back to %s" % disk not in out, out[-4000:]  # it never moved
    assert compute.checksums(disk) == sums
    now = [n for n in compute.zfs("list", "-H", "-o", "name", "-t", "all").split() if vm.uuid in n]
    if down_for is not None:  # back within the minute: the partial copy was destroyed
        assert now == datasets
        return
    assert "LEFT %s-restore-" % disk in out and "is as it was" in out, out[-4000:]
    left = [n for n in now if n not in datasets]
    assert set(datasets) <= set(now) and all(n.startswith(disk + "-restore-") and n.endswith("-new") for n in left)
    deadline = time.monotonic() + 120
    for name in left:  # what the operator is told to do, once its zfs receive has noticed the cut
        while compute.run(["zfs", "destroy", "-r", name], check=False).returncode != 0:
            assert time.monotonic() < deadline, "%s stayed busy" % name
            time.sleep(2)


def test_a_node_that_stops_answering_is_423_within_one_discovery(netlab):
    compute = netlab.node("compute")
    vm = new_vm(compute, data_mb=1)
    data_dir = os.path.join(netlab.directory, "api-%s" % uuid.uuid4().hex[:6])
    os.makedirs(data_dir, mode=0o700)
    env = ApiEnv(SimpleNamespace(backup_pool=netlab.pool), data_dir, netlab.inventory,
                 serve_args=["--discover-every", "3", "--no-scheduler"])
    env.add_user(*ADMIN, admin=True)
    env.start()

    def define(name: str):
        return client.post("vm/%s/define/backup/%s" % (vm.hostname, name), node=netlab.node("backup").name,
                           zpool=netlab.pool, schedule="0 4 * * *", retention=1)

    def until(name: str, unwanted: int, timeout: float):
        """Ask for new definitions (name0, name1, ...) until the answer is not `unwanted`."""
        deadline = time.monotonic() + timeout
        for n in range(1000):
            response = define("%s%d" % (name, n))
            if response.status != unwanted:
                return response
            assert time.monotonic() < deadline, open(os.path.join(data_dir, "serve.log")).read()[-3000:]
            time.sleep(0.5)

    try:
        client = env.client()
        first = until("a", 404, 60)  # once discovered
        assert first.status == 201, first.body
        log = os.path.join(data_dir, "serve.log")
        seen = os.path.getsize(log)
        compute.link(False)
        dead = until("b", 201, 60)
        assert dead.status == 423 and dead.body == {"detail": "Node is not operational"}, dead.body
        with open(log) as handle:
            handle.seek(seen)
            said = [line for line in handle if "node %s:" % compute.name in line]
        # Known by the first discovery that started after the cut (one already under way may finish first).
        assert any("NOT operational" in line for line in said[:2]), said
        compute.link(True)
        back = until("c", 423, 60)
        assert back.status == 201, back.body
    finally:
        compute.link(True)
        env.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
