"""vmbackup.zfs.send and vmbackup.zfs.snapshot on real zfs-fuse pools, run through ansible-runner."""

from __future__ import annotations

import os
import subprocess

import pytest
from ansible_run import dumps, run_module
from conftest import dataset_checksums, destroy, exists, snapshots, zfs

from vmbackup_lab.lab import Lab, LabVM


def take_snapshot(disk: str, name: str, definition: str = "daily") -> dict:
    res = run_module("vmbackup.zfs.snapshot", {
        "dataset": disk, "name": name,
        "properties": {"vmbackup:backup": name, "vmbackup:define": definition}})
    assert not res.failed, dumps(res)
    return res


def backup(lab: Lab, vm: LabVM, name: str, **extra) -> dict:
    disk = vm.disk(lab.compute_pool, 0)
    take_snapshot(disk, name)
    args = {"source": disk, "snapshot": name, "zpool": lab.backup_pool, "definition": "daily",
            "hostname": vm.hostname}
    args.update(extra)
    return run_module("vmbackup.zfs.send", args)


def target_of(lab: Lab, vm: LabVM) -> str:
    return "%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)


def test_full_then_incremental_backup_has_the_disks_content(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    first = backup(lab, vm, "daily-20261128_010000")
    assert not first.failed, dumps(first)
    assert first["changed"] and not first["incremental"] and first["base"] is None
    assert first["size"] > 8 * 2**20  # the 8 MiB of data went over the pipe
    assert dataset_checksums(target_of(lab, vm)) == dataset_checksums(disk)

    lab.write_data(disk, "changed.bin", 2)
    second = backup(lab, vm, "daily-20261128_020000", prune_source=True)
    assert not second.failed, dumps(second)
    assert second["incremental"] and second["base"] == "daily-20261128_010000"
    assert 2 * 2**20 < second["size"] < 4 * 2**20  # only the change was sent
    assert dataset_checksums(target_of(lab, vm)) == dataset_checksums(disk)
    assert snapshots(target_of(lab, vm)) == ["daily-20261128_010000", "daily-20261128_020000"]
    # prune_source keeps only the newest common snapshot on the compute node
    assert snapshots(disk) == ["daily-20261128_020000"]
    assert second["pruned_source"] == [disk + "@daily-20261128_010000"]
    assert first["diff"] == {"before": {"backups": []}, "after": {"backups": ["daily-20261128_010000"]}}
    assert second["diff"] == {"before": {"backups": ["daily-20261128_010000"]},
                              "after": {"backups": ["daily-20261128_010000", "daily-20261128_020000"]}}


def test_received_snapshot_carries_backup_properties_and_manifest(lab, vm):
    res = backup(lab, vm, "daily-20261128_030000")
    assert not res.failed, dumps(res)
    snap = target_of(lab, vm) + "@daily-20261128_030000"
    props = dict(line.split("\t")[1:3] for line in zfs(
        "get", "-H", "-o", "name,property,value",
        "vmbackup:backup,vmbackup:define,vmbackup:hostname,vmbackup:vm_uuid,vmbackup:disk_id", snap).splitlines())
    assert props == {"vmbackup:backup": "daily-20261128_030000", "vmbackup:define": "daily",
                     "vmbackup:hostname": vm.hostname, "vmbackup:vm_uuid": vm.uuid, "vmbackup:disk_id": "1"}
    import json
    with open(res["manifest"]) as handle:
        manifest = json.load(handle)
    assert manifest["backup"] == "daily-20261128_030000" and manifest["vm_uuid"] == vm.uuid
    assert manifest["target"]["dataset"] == target_of(lab, vm)


def test_second_run_of_the_same_backup_changes_nothing(lab, vm):
    assert not backup(lab, vm, "daily-20261128_040000").failed
    again = run_module("vmbackup.zfs.send", {"source": vm.disk(lab.compute_pool, 0),
                                             "snapshot": "daily-20261128_040000", "zpool": lab.backup_pool})
    assert not again.failed and again["changed"] is False, dumps(again)


def test_check_mode_sends_nothing(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    take_snapshot(disk, "daily-20261128_050000")
    res = run_module("vmbackup.zfs.send", {"source": disk, "snapshot": "daily-20261128_050000",
                                           "zpool": lab.backup_pool}, check=True)
    assert not res.failed and res["changed"], dumps(res)
    assert "zfs send" in res["cmd"] and "zfs receive" in res["cmd"]
    assert not exists(target_of(lab, vm))


def test_broken_chain_keeps_old_backups_aside_and_starts_a_new_full(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261128_060000").failed
    zfs("destroy", disk + "@daily-20261128_060000")  # the base is gone from the source
    res = backup(lab, vm, "daily-20261128_070000")
    assert not res.failed, dumps(res)
    assert not res["incremental"] and res["kept_aside"]
    assert snapshots(res["kept_aside"]) == ["daily-20261128_060000"]
    assert snapshots(target_of(lab, vm)) == ["daily-20261128_070000"]


@pytest.mark.parametrize("compression,ext", [("0", ""), ("1", ".gz"), ("2", ".bz2"), ("3", ".xz"),
                                             ("zstd", ".zst"), ("lz4", ".lz4")])
def test_file_backup_round_trips_through_zfs_receive(lab, vm, compression, ext):
    disk = vm.disk(lab.compute_pool, 0)
    name = "file-20261128_0800%02d" % len(ext)
    res = backup(lab, vm, name, type="file", compression=compression)
    assert not res.failed, dumps(res)
    path = res["file_path"]
    assert path.endswith("/%s/disk0/%s-full.zfs%s" % (vm.uuid, name, ext))
    assert subprocess.run(["sha256sum", path], capture_output=True, text=True).stdout.split()[0] == res["checksum"]
    assert os.path.exists(path + ".json")
    decompress = {"": ["cat"], ".gz": ["gzip", "-dc"], ".bz2": ["bzip2", "-dc"], ".xz": ["xz", "-dc"],
                  ".zst": ["zstd", "-dqc"], ".lz4": ["lz4", "-dqc"]}[ext]
    check = "%s/check-%s" % (lab.backup_pool, vm.uuid[:8] + ext.strip("."))
    with open(path, "rb") as stream:
        unpack = subprocess.Popen(decompress, stdin=stream, stdout=subprocess.PIPE)
        subprocess.run(["zfs", "receive", check], stdin=unpack.stdout, check=True)
        assert unpack.wait() == 0
    try:
        assert dataset_checksums(check) == dataset_checksums(disk)
    finally:
        destroy(check)


def test_bad_names_are_refused_before_any_command_runs(lab, vm):
    for args, option in [
        ({"source": "zones/-rf", "snapshot": "s1", "zpool": lab.backup_pool}, "source"),
        ({"source": vm.disk(lab.compute_pool, 0), "snapshot": "s1;rm -rf /", "zpool": lab.backup_pool}, "snapshot"),
        ({"source": vm.disk(lab.compute_pool, 0), "snapshot": "s1", "zpool": "-o evil"}, "zpool"),
        ({"source": vm.disk(lab.compute_pool, 0), "snapshot": "s1", "zpool": lab.backup_pool,
          "source_host": "-oProxyCommand=touch /tmp/x"}, "source_host"),
    ]:
        res = run_module("vmbackup.zfs.send", args)
        assert res.failed and res["msg"].startswith(option + ":"), dumps(res)
        assert "cmd" not in res or not res.get("cmd")
    res = run_module("vmbackup.zfs.snapshot", {"dataset": "../etc", "name": "x"})
    assert res.failed and res["msg"].startswith("dataset:"), dumps(res)


def test_progress_file_counts_the_bytes_sent(lab, vm, tmp_path):
    import json
    progress = tmp_path / "progress.json"
    res = backup(lab, vm, "daily-20261128_235900", bwlimit=4 * 2**20, progress_file=str(progress))
    assert not res.failed, dumps(res)
    data = json.loads(progress.read_text())
    assert data["bytes"] == res["size"] and data["total"] and data["total"] >= 8 * 2**20
