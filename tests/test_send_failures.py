"""A transfer that fails or is killed midway leaves both nodes clean, and the next backup works."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import threading
import time

import pytest
from ansible_run import dumps, run_module
from conftest import exists, snapshots
from test_send import backup, take_snapshot, target_of


def pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def parent_of(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def run_and_interrupt(args: dict, victim: str, sig: int = signal.SIGKILL) -> dict:
    """Run the send module (slowed by bwlimit); once its `zfs send` runs, signal the victim."""
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(res=run_module("vmbackup.zfs.send", args)))
    worker.start()
    # zfs-fuse's zfs rewrites its own argv ('@' becomes a separator), so match either form.
    pattern = "zfs send .*%s.%s" % (args["source"], args["snapshot"])
    deadline = time.monotonic() + 60
    sender = []
    while not sender and time.monotonic() < deadline:
        sender = pids_of(pattern)
        time.sleep(0.1)
    assert sender, "the transfer never started"
    time.sleep(1.5)  # let some data flow first
    pid = sender[0] if victim == "zfs send" else parent_of(sender[0])
    os.kill(pid, sig)
    worker.join(120)
    return outcome["res"]


@pytest.mark.parametrize("kind", ["dataset", "file"])
def test_killing_zfs_send_midway_leaves_both_sides_clean(lab, vm, kind):
    disk = vm.disk(lab.compute_pool, 0)
    name = "daily-20261128_110000"
    take_snapshot(disk, name)
    args = {"source": disk, "snapshot": name, "zpool": lab.backup_pool, "type": kind, "bwlimit": 2 * 2**20}
    res = run_and_interrupt(args, "zfs send")
    assert res.failed and "transfer failed" in res["msg"], dumps(res)
    assert not exists(target_of(lab, vm))
    assert snapshots(disk) == []  # the new source snapshot is gone too
    folder = os.path.join(lab.mountpoint(lab.backup_pool), "backups", "file", vm.uuid, "disk0")
    assert glob.glob(folder + "/*") == []  # no partial file

    again = backup(lab, vm, "daily-20261128_110500", type=kind)
    assert not again.failed, dumps(again)


def test_interrupted_incremental_leaves_the_backup_dataset_as_it_was(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261128_120000").failed
    lab.write_data(disk, "more.bin", 8)
    take_snapshot(disk, "daily-20261128_130000")
    args = {"source": disk, "snapshot": "daily-20261128_130000", "zpool": lab.backup_pool, "bwlimit": 2 * 2**20}
    res = run_and_interrupt(args, "module", signal.SIGTERM)
    assert res.failed, dumps(res)
    assert snapshots(target_of(lab, vm)) == ["daily-20261128_120000"]
    assert snapshots(disk) == ["daily-20261128_120000"]
    again = backup(lab, vm, "daily-20261128_140000")
    assert not again.failed and again["incremental"] and again["base"] == "daily-20261128_120000", dumps(again)


def test_a_killed_module_leaves_a_partial_file_that_the_next_run_removes(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    take_snapshot(disk, "weekly-20261128_150000")
    args = {"source": disk, "snapshot": "weekly-20261128_150000", "zpool": lab.backup_pool, "type": "file",
            "bwlimit": 2 * 2**20}
    res = run_and_interrupt(args, "module", signal.SIGKILL)  # no cleanup can run
    assert res.failed
    folder = os.path.join(lab.mountpoint(lab.backup_pool), "backups", "file", vm.uuid, "disk0")
    for proc in pids_of("zfs send .*%s" % disk):  # what the killed module left running
        os.kill(proc, signal.SIGKILL)
    time.sleep(0.5)
    leftovers = glob.glob(folder + "/*.part-*")
    assert leftovers, "expected the killed run to leave its partial file"
    again = backup(lab, vm, "weekly-20261128_160000", type="file")
    assert not again.failed, dumps(again)
    assert not any(os.path.exists(p) for p in leftovers)
