"""vmbackup.zfs.restore on real zfs-fuse pools: the disk comes back as it was at backup time, or stays as it was."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import threading
import time
import uuid

import pytest
from ansible_run import dumps, run_module
from conftest import dataset_checksums, destroy, exists, snapshots, zfs
from test_send import backup, take_snapshot
from test_send_failures import parent_of, pids_of

from vmbackup_lab.lab import Lab, LabVM, ensure_sshd


def restore(lab: Lab, vm: LabVM, name: str, target: str, check: bool = False, **extra) -> dict:
    args = {"zpool": lab.backup_pool, "backup": name, "vm_uuid": vm.uuid, "disk": 0, "target": target}
    args.update(extra)
    return run_module("vmbackup.zfs.restore", args, check=check)


def state(disk: str) -> dict:
    """What a failed restore must leave untouched: the data, the dataset itself, its snapshots and properties."""
    return {"files": dataset_checksums(disk), "guid": zfs("get", "-Hp", "-o", "value", "guid", disk).strip(),
            "snapshots": snapshots(disk), "properties": local_properties(disk),
            "mounted": zfs("get", "-H", "-o", "value", "mounted", disk).strip()}


def local_properties(dataset: str) -> dict:
    out = zfs("get", "-Hp", "-s", "local", "-o", "property,value", "all", dataset)
    return dict(line.split("\t", 1) for line in out.splitlines())


def leftovers(disk: str) -> list[str]:
    parent = disk.rsplit("/", 1)[0]
    names = zfs("list", "-H", "-o", "name", "-r", parent).splitlines()
    return [n for n in names if n.startswith(disk + "-restore-")]


@pytest.fixture
def other_vm(lab):
    machine = LabVM(str(uuid.uuid4()), "other-%s.lab" % uuid.uuid4().hex[:6], disks=1)
    lab.create_vm(machine, data_mb=4)
    return machine


def test_dataset_restore_brings_back_the_disk_as_it_was_at_backup_time(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    res = backup(lab, vm, "daily-20261129_010000")
    assert not res.failed, dumps(res)
    at_backup = dataset_checksums(disk)
    before = state(disk)
    lab.write_data(disk, "after-backup.bin", 2)
    os.unlink(os.path.join(lab.disk_path(disk), "data.bin"))
    take_snapshot(disk, "manual-1")  # goes with the old disk (force defaults to true)
    assert dataset_checksums(disk) != at_backup

    res = restore(lab, vm, "daily-20261129_010000", disk)
    assert not res.failed, dumps(res)
    assert res["changed"] and res["kept_aside"] is None and res["checksum_verified"] is False
    assert res["source"] == "%s/backups/ds/%s-disk0@daily-20261129_010000" % (lab.backup_pool, vm.uuid)
    assert res["size"] > 8 * 2**20 and res["time"] >= 0
    assert sorted(res["dropped_snapshots"]) == ["daily-20261129_010000", "manual-1"]
    after = state(disk)
    assert after["files"] == at_backup
    assert after["guid"] != before["guid"]  # a new dataset took the old one's place
    assert after["snapshots"] == []  # neither the old disk's nor the one that came with the stream
    assert after["properties"] == before["properties"]  # quota and vmbackup:* carried over
    assert after["properties"]["quota"] == str(256 * 2**20)
    assert after["properties"]["vmbackup:hostname"] == vm.hostname
    assert after["mounted"] == "yes"
    assert leftovers(disk) == []
    assert res["diff"]["before"] == {"disk": disk, "guid": before["guid"], "snapshots": res["dropped_snapshots"]}
    assert res["diff"]["after"] == {"disk": disk, "guid": after["guid"], "snapshots": []}, dumps(res)


def test_restore_into_another_vms_disk(lab, vm, other_vm):
    disk, other = vm.disk(lab.compute_pool, 0), other_vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_020000").failed
    at_backup = dataset_checksums(disk)
    other_props = local_properties(other)
    res = restore(lab, vm, "daily-20261129_020000", other)
    assert not res.failed, dumps(res)
    assert dataset_checksums(other) == at_backup
    # the target keeps its own identity: its hostname, not the backed-up VM's
    assert local_properties(other) == other_props
    assert local_properties(other)["vmbackup:hostname"] == other_vm.hostname
    assert dataset_checksums(disk) == at_backup  # the source VM is untouched
    assert leftovers(other) == []


@pytest.mark.parametrize("compression,ext", [("0", ""), ("1", ".gz"), ("2", ".bz2"), ("3", ".xz"),
                                             ("zstd", ".zst"), ("lz4", ".lz4")])
def test_file_restore_from_every_compression(lab, vm, compression, ext):
    disk = vm.disk(lab.compute_pool, 0)
    name = "file-20261129_0300%02d" % len(ext)
    made = backup(lab, vm, name, type="file", compression=compression)
    assert not made.failed, dumps(made)
    at_backup = dataset_checksums(disk)
    lab.write_data(disk, "data.bin", 1)  # overwrite
    assert dataset_checksums(disk) != at_backup

    res = restore(lab, vm, name, disk, type="file")
    assert not res.failed, dumps(res)
    assert res["checksum_verified"] is True and res["source"] == made["file_path"]
    assert res["source"].endswith("-full.zfs" + ext)
    assert dataset_checksums(disk) == at_backup
    assert snapshots(disk) == [] and leftovers(disk) == []


def test_file_restore_with_an_explicit_file_path_a_rate_limit_and_progress(lab, vm, other_vm, tmp_path):
    made = backup(lab, vm, "file-20261129_031000", type="file", compression="gzip")
    assert not made.failed, dumps(made)
    at_backup = dataset_checksums(vm.disk(lab.compute_pool, 0))
    progress = tmp_path / "progress.json"
    res = restore(lab, vm, "file-20261129_031000", other_vm.disk(lab.compute_pool, 0), type="2",
                  file_path=made["file_path"], bwlimit=4 * 2**20, progress_file=str(progress))
    assert not res.failed and res["type"] == "file", dumps(res)
    assert dataset_checksums(other_vm.disk(lab.compute_pool, 0)) == at_backup
    assert res["time"] > 1.5  # 8 MiB at 4 MiB/s
    data = json.loads(progress.read_text())
    assert data["bytes"] == res["size"] and data["total"] == res["size"]  # the stream's size from the manifest


def test_a_damaged_file_is_refused_before_anything_changes(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    made = backup(lab, vm, "file-20261129_040000", type="file", compression="zstd")
    assert not made.failed, dumps(made)
    lab.write_data(disk, "newer.bin", 1)
    take_snapshot(disk, "manual-2")
    before = state(disk)
    with open(made["file_path"], "r+b") as handle:  # flip one byte in the middle
        handle.seek(os.path.getsize(made["file_path"]) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))

    res = restore(lab, vm, "file-20261129_040000", disk, type="file")
    assert res.failed and "damaged" in res["msg"] and res["checksum_verified"] is False, dumps(res)
    assert res["cleanup"] == []  # nothing had been touched
    assert state(disk) == before
    assert leftovers(disk) == []


def rewrite_with_matching_manifest(path: str, keep_bytes: int) -> None:
    """Cut the file short and make its manifest agree, so that only `zfs receive` can notice."""
    with open(path, "r+b") as handle:
        handle.truncate(keep_bytes)
    with open(path, "rb") as handle:
        checksum = hashlib.file_digest(handle, "sha256").hexdigest()
    with open(path + ".json") as handle:
        manifest = json.load(handle)
    manifest["checksum"] = checksum
    with open(path + ".json", "w") as handle:
        json.dump(manifest, handle)


def test_a_stream_that_breaks_midway_leaves_the_target_as_it_was(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    made = backup(lab, vm, "file-20261129_050000", type="file")
    assert not made.failed, dumps(made)
    lab.write_data(disk, "newer.bin", 1)
    take_snapshot(disk, "manual-3")
    before = state(disk)
    rewrite_with_matching_manifest(made["file_path"], os.path.getsize(made["file_path"]) // 2)

    res = restore(lab, vm, "file-20261129_050000", disk, type="file")
    assert res.failed and res["msg"].startswith("transfer failed"), dumps(res)
    assert res["checksum_verified"] is True  # the check passed; zfs receive found the stream cut short
    assert any(s["stage"] == "zfs receive" and s["rc"] for s in res["stages"]), dumps(res)
    assert "zfs receive" in res["cmd"] and res["rc"] and res["stderr"] is not None  # the failed stage, in the shape
    # The disk never moved: the stream went into a copy beside it, which zfs receive or the undo removed.
    assert not any(line.startswith(("rename", "FAILED", "LEFT")) for line in res["cleanup"]), dumps(res)
    assert res["kept_aside"] is None
    assert state(disk) == before  # same data, same dataset (guid), same snapshots, still mounted
    assert leftovers(disk) == []


def test_a_failure_after_the_receive_destroys_the_new_disk_and_puts_the_old_one_back(lab, vm):
    small = LabVM(str(uuid.uuid4()), "small-%s.lab" % uuid.uuid4().hex[:6], size_mb=4)
    lab.create_vm(small, data_mb=2)
    target = small.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_055000").failed  # 8 MiB: more than the 4 MiB quota of `small`
    before = state(target)
    res = restore(lab, vm, "daily-20261129_055000", target)
    assert res.failed and "quota" in res["cmd"] and res["rc"] and res["stderr"], dumps(res)
    assert res["cleanup"][0] == "destroy the new copy %s" % target, dumps(res)  # swapped in, then refused
    assert res["cleanup"][1].startswith("rename %s-restore-" % target), dumps(res)
    assert state(target) == before
    assert leftovers(target) == []


def restore_and_interrupt(args: dict, sig: int = signal.SIGTERM) -> dict:
    """Run the restore module (slowed by bwlimit); once `zfs receive` runs, signal the module's process."""
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(res=run_module("vmbackup.zfs.restore", args)))
    worker.start()
    deadline = time.monotonic() + 60
    receiver = []
    while not receiver and time.monotonic() < deadline:
        receiver = pids_of("zfs receive -u %s-restore-[0-9_]+-new$" % args["target"])
        time.sleep(0.1)
    assert receiver, "the transfer never started"
    time.sleep(1.5)  # let some data land in the new dataset first
    outcome["aside at the kill"] = leftovers(args["target"])
    outcome["disk at the kill"] = state(args["target"])
    os.kill(parent_of(receiver[0]), sig)
    worker.join(120)
    outcome["res"]["aside_at_the_kill"] = outcome["aside at the kill"]
    outcome["res"]["disk_at_the_kill"] = outcome["disk at the kill"]
    return outcome["res"]


@pytest.mark.parametrize("kind", ["dataset", "file"])
def test_sigterm_midway_leaves_the_old_disk_as_it_was(lab, vm, kind):
    disk = vm.disk(lab.compute_pool, 0)
    made = backup(lab, vm, "daily-20261129_060000", type=kind)
    assert not made.failed, dumps(made)
    at_backup = dataset_checksums(disk)
    lab.write_data(disk, "newer.bin", 1)
    take_snapshot(disk, "manual-4")
    before = state(disk)

    res = restore_and_interrupt({"zpool": lab.backup_pool, "backup": "daily-20261129_060000", "vm_uuid": vm.uuid,
                                 "target": disk, "type": kind, "bwlimit": 2 * 2**20})
    assert res.failed and "signal %d" % signal.SIGTERM in res["msg"], dumps(res)
    # While the backup came in, beside it, the disk itself was untouched...
    assert [n.endswith("-new") for n in res["aside_at_the_kill"]] == [True], dumps(res)
    assert res["disk_at_the_kill"] == before
    # ...and the partial copy is gone (a killed zfs receive removes it itself, or the undo destroys it).
    assert not any(line.startswith(("FAILED", "LEFT", "rename")) for line in res["cleanup"]), dumps(res)
    assert state(disk) == before
    assert leftovers(disk) == []

    again = restore(lab, vm, "daily-20261129_060000", disk, type=kind)
    assert not again.failed, dumps(again)
    assert dataset_checksums(disk) == at_backup


def test_force_false_refuses_a_disk_with_snapshots_and_changes_nothing(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_070000").failed  # leaves its snapshot on the disk
    lab.write_data(disk, "newer.bin", 1)
    zfs("snapshot", disk + "@users-own")  # a snapshot of the VM's, not vmbackup's
    before = state(disk)
    res = restore(lab, vm, "daily-20261129_070000", disk, force=False)
    assert res.failed and "force=false" in res["msg"] and "users-own" in res["msg"], dumps(res)
    assert "daily-20261129_070000" not in res["msg"]  # vmbackup's own base snapshot is not the VM's
    assert state(disk) == before

    zfs("destroy", disk + "@users-own")
    res = restore(lab, vm, "daily-20261129_070000", disk, force=False)
    assert not res.failed and res["dropped_snapshots"] == ["daily-20261129_070000"], dumps(res)
    assert "newer.bin" not in dataset_checksums(disk)


def test_a_disk_with_datasets_below_it_is_refused(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_075000").failed
    zfs("create", disk + "/data")  # as an OS zone's delegated dataset
    try:
        before = state(disk)
        res = restore(lab, vm, "daily-20261129_075000", disk)
        assert res.failed and "datasets below it" in res["msg"] and disk + "/data" in res["msg"], dumps(res)
        assert state(disk) == before and exists(disk + "/data")
    finally:
        destroy(disk + "/data")


def test_check_mode_says_what_would_happen_and_changes_nothing(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    made = backup(lab, vm, "file-20261129_080000", type="file", compression="gzip")
    lab.write_data(disk, "newer.bin", 1)
    before = state(disk)
    res = restore(lab, vm, "file-20261129_080000", disk, check=True, type="file")
    assert not res.failed and res["changed"], dumps(res)
    assert res["cmd"].startswith("gzip -d -c %s" % made["file_path"])
    assert "zfs receive -u %s-restore-" % disk in res["cmd"]
    assert res["checksum_verified"] is True and "beside %s, then swap them" % disk in res["msg"]
    assert state(disk) == before and leftovers(disk) == []


def test_missing_target_or_backup_is_refused(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_090000").failed
    res = restore(lab, vm, "daily-20261129_090000", "%s/%s-disk7" % (lab.compute_pool, vm.uuid))
    assert res.failed and res["msg"].startswith("target:") and "does not exist" in res["msg"], dumps(res)
    before = state(disk)
    res = restore(lab, vm, "daily-20261129_999999", disk)
    assert res.failed and res["msg"].startswith("backup:"), dumps(res)
    res = restore(lab, vm, "daily-20261129_090000", disk, type="file")
    assert res.failed and res["msg"].startswith("backup:"), dumps(res)
    assert state(disk) == before


def test_a_disk_left_aside_by_a_killed_restore_is_named_when_the_target_is_missing(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_100000").failed
    aside = disk + "-restore-20261129_100500"
    zfs("unmount", disk)
    zfs("rename", disk, aside)  # as a SIGKILL right after the rename would leave it
    try:
        res = restore(lab, vm, "daily-20261129_100000", disk)
        assert res.failed and aside in res["msg"] and "rename it back" in res["msg"], dumps(res)
        assert exists(aside) and not exists(disk)
    finally:
        zfs("rename", aside, disk)


def test_bad_names_are_refused_before_any_command_runs(lab, vm):
    good = {"zpool": lab.backup_pool, "backup": "daily-20261129_110000", "vm_uuid": vm.uuid,
            "target": vm.disk(lab.compute_pool, 0)}
    for bad, option in [({"target": "zones/../etc"}, "target"), ({"backup": "x;rm -rf /"}, "backup"),
                        ({"zpool": "-o"}, "zpool"), ({"vm_uuid": "../../etc"}, "vm_uuid"),
                        ({"target_host": "-oProxyCommand=x"}, "target_host"),
                        ({"target": "%s/backups/ds/x" % lab.backup_pool}, "target")]:
        res = run_module("vmbackup.zfs.restore", dict(good, **bad))
        assert res.failed and res["msg"].startswith(option + ":"), dumps(res)
        assert not res.get("cmd")


def test_a_backup_kept_aside_by_a_broken_chain_can_still_be_restored(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_120000").failed
    at_first = dataset_checksums(disk)
    zfs("destroy", disk + "@daily-20261129_120000")  # the chain breaks: send keeps the old dataset aside
    lab.write_data(disk, "newer.bin", 1)
    second = backup(lab, vm, "daily-20261129_130000")
    assert not second.failed and second["kept_aside"], dumps(second)
    res = restore(lab, vm, "daily-20261129_120000", disk)
    assert not res.failed and res["source"] == second["kept_aside"] + "@daily-20261129_120000", dumps(res)
    assert dataset_checksums(disk) == at_first


@pytest.fixture(scope="module")
def ssh_access(lab):
    return ensure_sshd("/var/tmp/vmbackup-ssh")


def test_restore_pushed_over_ssh(lab, vm, other_vm, ssh_access):
    assert not backup(lab, vm, "daily-20261129_140000").failed
    at_backup = dataset_checksums(vm.disk(lab.compute_pool, 0))
    target = other_vm.disk(lab.compute_pool, 0)
    res = restore(lab, vm, "daily-20261129_140000", target, **ssh_access.module_args("target"))
    assert not res.failed, dumps(res)
    assert " | ssh " in res["cmd"] and "-p %d" % ssh_access.port in res["cmd"]
    assert dataset_checksums(target) == at_backup
    assert leftovers(target) == []


def test_no_partial_datasets_anywhere_after_the_suite(lab):
    """Runs last in this file: nothing named -restore- survives any test above."""
    names = zfs("list", "-H", "-o", "name", "-r", lab.compute_pool).splitlines()
    assert [n for n in names if "-restore-" in n] == []
    assert glob.glob(os.path.join(lab.mountpoint(lab.compute_pool), "*-restore-*")) == []


def test_a_vm_started_during_the_transfer_keeps_its_disk(lab, vm):
    """The API checked the VM was stopped when the restore was asked for; the module asks again right before
    the swap, so a VM started during a long transfer keeps its disk, as it was (the zfs backend: the disk's
    vmbackup:state)."""
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_020000").failed
    lab.write_data(disk, "after-backup.bin", 2)
    before = state(disk)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(res=restore(
        lab, vm, "daily-20261129_020000", disk, bwlimit=2 * 2**20)))
    worker.start()
    deadline = time.monotonic() + 60
    while not leftovers(disk) and time.monotonic() < deadline:  # the incoming copy: the transfer runs
        time.sleep(0.1)
    assert leftovers(disk), "the restore never started receiving"
    zfs("set", "vmbackup:state=running", disk)  # the VM starts meanwhile
    try:
        worker.join(120)
        res = outcome["res"]
        assert res.failed and "is running now" in res["msg"] and "the disk is as it was" in res["msg"], dumps(res)
        after = state(disk)
        assert after["properties"].pop("vmbackup:state") == "running"
        before["properties"].pop("vmbackup:state", None)
        assert after == before and leftovers(disk) == []
    finally:
        zfs("set", "vmbackup:state=stopped", disk)


@pytest.mark.parametrize("owner, refused", [("2b4c3d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e", "running"),
                                            ("8e1d7c6b-5a49-4c38-b27a-16f5e4d3c2b1", None),
                                            ("0badc0de-0000-4000-8000-000000000000", "cannot tell")])
def test_the_state_check_asks_vmadm_for_the_target_vm(lab, vm, tmp_path, owner, refused):
    """On SmartOS the check is `vmadm get <target_vm_uuid>` (replayed here from tests/fixtures/vmadm: a running
    KVM, a stopped zone, and a VM vmadm does not know, which is refused rather than guessed)."""
    from test_discovery import replay_command
    vmadm, log = replay_command(tmp_path, "vmadm")
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261129_030000").failed
    before = state(disk)
    res = restore(lab, vm, "daily-20261129_030000", disk, vm_backend="vmadm", vmadm_command=vmadm,
                  target_vm_uuid=owner)
    with open(log) as handle:
        assert handle.read().split() == ["get", owner]
    if refused is None:
        assert not res.failed, dumps(res)
    else:
        assert res.failed and refused in res["msg"], dumps(res)
        assert state(disk) == before and leftovers(disk) == []
