"""vmbackup.zfs.backup_info lists exactly the backups a backup node holds, and says what is wrong with the rest."""

from __future__ import annotations

import os

from ansible_run import dumps, run_module
from conftest import zfs
from test_send import backup, target_of

from vmbackup_lab.lab import Lab, LabVM


def info(lab: Lab, check: bool = False, **filters) -> dict:
    res = run_module("vmbackup.zfs.backup_info", dict({"zpool": lab.backup_pool}, **filters), check=check)
    assert not res.failed, dumps(res)
    return res


def by_name(res: dict) -> dict[str, dict]:
    return {b["name"]: b for b in res["backups"]}


def test_lists_exactly_the_dataset_and_file_backups_of_a_vm(lab, vm):
    made = {
        "daily-20261201_010000": backup(lab, vm, "daily-20261201_010000"),
        "daily-20261201_020000": backup(lab, vm, "daily-20261201_020000"),
        "weekly-20261201_030000": backup(lab, vm, "weekly-20261201_030000", type="file", definition="weekly",
                                         compression="zstd"),
        "weekly-20261201_040000": backup(lab, vm, "weekly-20261201_040000", type="file", definition="weekly"),
    }
    assert not any(m.failed for m in made.values())
    res = info(lab, vm_uuid=vm.uuid)
    assert not res["changed"] and res["count"] == 4
    found = by_name(res)
    assert set(found) == set(made)
    for name, item in found.items():
        assert item["vm_uuid"] == vm.uuid and item["hostname"] == vm.hostname and item["disk_id"] == 1
        assert item["definition"] == name.split("-")[0] and item["problem"] is None
        assert item["created"].startswith("20") and item["created"].endswith("Z")
        assert item["manifest"] and os.path.exists(item["manifest"])
        assert item["size"] == made[name]["size"]
    ds = found["daily-20261201_020000"]
    assert ds["type"] == "dataset" and ds["path"] == target_of(lab, vm) + "@daily-20261201_020000"
    assert ds["guid"] == zfs("get", "-Hp", "-o", "value", "guid", ds["path"]).strip()
    assert ds["kept_aside"] is False and ds["checksum"] is None
    f = found["weekly-20261201_030000"]
    assert f["type"] == "file" and f["path"] == made["weekly-20261201_030000"]["file_path"]
    assert f["checksum"] == made["weekly-20261201_030000"]["checksum"] and f["compression"] == "zstd"
    # oldest first within each type
    assert [b["name"] for b in res["backups"]] == sorted(made)


def test_filters(lab, vm):
    assert not backup(lab, vm, "daily-20261201_050000").failed
    assert not backup(lab, vm, "hourly-20261201_060000", definition="hourly").failed
    assert not backup(lab, vm, "hourly-20261201_070000", definition="hourly", type="file").failed
    assert [b["name"] for b in info(lab, vm_uuid=vm.uuid, definition="hourly")["backups"]] == [
        "hourly-20261201_060000", "hourly-20261201_070000"]
    assert [b["name"] for b in info(lab, vm_uuid=vm.uuid, type="2")["backups"]] == ["hourly-20261201_070000"]
    assert [b["name"] for b in info(lab, vm_uuid=vm.uuid.upper(), type="dataset", definition="hourly")["backups"]] \
        == ["hourly-20261201_060000"]
    assert info(lab, vm_uuid=vm.uuid, disk_id=2)["backups"] == []
    assert info(lab, vm_uuid=vm.uuid, disk_id=1)["count"] == 3


def test_half_there_backups_are_listed_with_their_problem(lab, vm):
    no_manifest = backup(lab, vm, "daily-20261201_080000", type="file")
    no_file = backup(lab, vm, "daily-20261201_090000", type="file")
    no_snapshot = backup(lab, vm, "daily-20261201_100000")
    assert not any(r.failed for r in (no_manifest, no_file, no_snapshot))
    os.unlink(no_manifest["file_path"] + ".json")
    os.unlink(no_file["file_path"])
    zfs("destroy", target_of(lab, vm) + "@daily-20261201_100000")
    zfs("snapshot", target_of(lab, vm) + "@by-hand")
    with open(os.path.join(os.path.dirname(no_file["file_path"]), "x-full.zfs.part-1"), "w"):
        pass  # an unfinished file is not a backup

    found = by_name(info(lab, vm_uuid=vm.uuid))
    assert set(found) == {"daily-20261201_080000", "daily-20261201_090000", "daily-20261201_100000", "by-hand"}
    assert found["daily-20261201_080000"]["problem"].startswith("file without manifest")
    assert found["daily-20261201_080000"]["size"] == os.path.getsize(no_manifest["file_path"])
    assert found["daily-20261201_090000"]["problem"].startswith("manifest without file")
    assert found["daily-20261201_090000"]["checksum"] == no_file["checksum"]
    assert found["daily-20261201_100000"]["problem"].startswith("manifest without snapshot")
    assert found["daily-20261201_100000"]["manifest"] == no_snapshot["manifest"]
    assert found["by-hand"]["problem"].startswith("the snapshot has no vmbackup properties")


def test_backups_in_a_dataset_kept_aside_are_listed(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    assert not backup(lab, vm, "daily-20261201_110000").failed
    zfs("destroy", disk + "@daily-20261201_110000")
    second = backup(lab, vm, "daily-20261201_120000")
    assert second["kept_aside"], dumps(second)
    found = by_name(info(lab, vm_uuid=vm.uuid, check=True))
    assert found["daily-20261201_110000"]["kept_aside"] is True
    assert found["daily-20261201_110000"]["dataset"] == second["kept_aside"]
    assert found["daily-20261201_120000"]["kept_aside"] is False


def test_a_vm_without_backups_lists_nothing_and_a_missing_pool_fails(lab):
    other = LabVM("00000000-0000-4000-8000-00000000beef", "none.lab")
    assert info(lab, vm_uuid=other.uuid)["backups"] == []
    res = run_module("vmbackup.zfs.backup_info", {"zpool": "nosuchpool%d" % os.getpid()})
    assert res.failed and res["msg"].startswith("zpool:"), dumps(res)
