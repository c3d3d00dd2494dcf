"""vmbackup.zfs.verify and playbooks/verify.yml on real zfs-fuse pools: a drill restores a backup into scratch space
on the backup node, compares its content with the source, and leaves nothing behind, whatever the outcome."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from ansible_run import dumps, run_module
from conftest import destroy, exists, snapshots, zfs
from playbook_env import BACKUP, COMPUTE, Run, lab_inventory
from test_send import backup, take_snapshot, target_of
from test_send_failures import parent_of, pids_of

from vmbackup_lab.lab import Lab, LabVM

NAME = "daily-20261201_010000"


def source_digest(lab: Lab, vm: LabVM, name: str = NAME) -> dict:
    res = run_module("vmbackup.zfs.verify", {"mode": "digest", "source": vm.disk(lab.compute_pool, 0), "backup": name})
    assert not res.failed, dumps(res)
    return res


def drill(lab: Lab, vm: LabVM, name: str = NAME, check: bool = False, **extra) -> dict:
    args = {"zpool": lab.backup_pool, "backup": name, "vm_uuid": vm.uuid}
    args.update(extra)
    return run_module("vmbackup.zfs.verify", args, check=check)


def drill_against_source(lab: Lab, vm: LabVM, name: str = NAME, **extra) -> dict:
    source = source_digest(lab, vm, name)
    if source["found"]:
        extra.update(source_digest=source["digest"], source_guid=source["guid"], source_snapshot=source["snapshot"],
                     source_node=COMPUTE)
    return drill(lab, vm, name, **extra)


def scratch_left(lab: Lab) -> list[str]:
    """Every dataset a drill may have made: below <zpool>/backups/verify, and clones next to the VM disks."""
    names = zfs("list", "-H", "-o", "name", "-r", lab.backup_pool, lab.compute_pool).splitlines()
    return [n for n in names if "-verify-" in n]


def backup_state(lab: Lab, vm: LabVM, kind: str, made: dict) -> dict:
    """What a drill must leave as it was: the backup's snapshots and guids, or its file and manifest."""
    if kind == "dataset":
        target = target_of(lab, vm)
        return {"snapshots": snapshots(target), "guid": zfs("get", "-Hp", "-o", "value", "guid",
                                                            "%s@%s" % (target, NAME)).strip()}
    with open(made["file_path"], "rb") as handle:
        data = handle.read()
    with open(made["file_path"] + ".json") as handle:
        return {"file": data, "manifest": handle.read()}


@pytest.fixture
def inventory(lab, tmp_path):
    return lab_inventory(lab, tmp_path)


# -- a good backup passes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dataset", "file"])
def test_a_good_backup_passes_against_its_source_and_leaves_no_scratch(lab, vm, kind):
    made = backup(lab, vm, NAME, type=kind, compression="zstd" if kind == "file" else "none")
    assert not made.failed, dumps(made)
    before = backup_state(lab, vm, kind, made)
    source = source_digest(lab, vm)
    assert source["found"] and source["digest"] and source["scratch"], dumps(source)  # a clone: no .zfs here

    res = drill(lab, vm, type=kind, source_digest=source["digest"], source_guid=source["guid"], source_node=COMPUTE)
    assert not res.failed, dumps(res)
    assert res["ok"] is True and res["outcome"] == "passed" and res["changed"] is False, dumps(res)
    assert res["digest"] == source["digest"] and res["guid"] == source["guid"] and res["compared_with"] == ["source"]
    assert "matches the source snapshot" in res["reason"]
    assert res["scratch"].startswith("%s/backups/verify/%s-disk0-verify-" % (lab.backup_pool, vm.uuid))
    assert "zfs receive -u %s" % res["scratch"] in res["cmd"] and "sha256" in res["digest_cmd"]
    assert res["checksum_verified"] is (kind == "file") and res["duration"] > 0
    assert scratch_left(lab) == []
    assert backup_state(lab, vm, kind, made) == before

    again = drill(lab, vm, type=kind, expected_digest=res["digest"])  # the source gone: the recorded digest
    assert not again.failed and again["compared_with"] == ["expected"], dumps(again)
    assert scratch_left(lab) == []


def test_check_mode_plans_and_makes_nothing(lab, vm):
    assert not backup(lab, vm, NAME, type="file").failed
    res = drill(lab, vm, check=True, type="file", expected_digest="0" * 64)
    assert not res.failed and res["outcome"] is None and res["checksum_verified"] is False, dumps(res)
    assert res["cmd"].startswith("cat ") and "zfs receive -u" in res["cmd"] and "would receive" in res["msg"]
    planned = run_module("vmbackup.zfs.verify", {"mode": "digest", "source": vm.disk(lab.compute_pool, 0),
                                                 "backup": NAME}, check=True)
    assert not planned.failed and planned["digest"] is None and "would hash" in planned["msg"], dumps(planned)
    assert scratch_left(lab) == [] and not exists(lab.backup_pool + "/backups/verify/%s-disk0" % vm.uuid)


# -- a bad backup fails, with its reason, and is left as it was ------------------------------------------
def flip_middle_byte(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupted_file_fails_with_the_checksums(lab, vm):
    made = backup(lab, vm, NAME, type="file")
    assert not made.failed, dumps(made)
    flip_middle_byte(made["file_path"])
    before = backup_state(lab, vm, "file", made)
    res = drill_against_source(lab, vm, type="file")
    assert res.failed and res["outcome"] == "failed" and res["ok"] is False, dumps(res)
    assert res["reason"].startswith("checksum mismatch: the file's sha256 is ")
    assert "the manifest says %s" % made["checksum"] in res["reason"]
    assert res["scratch"] is None and res["cleanup"] == []  # refused before anything was received
    assert scratch_left(lab) == [] and backup_state(lab, vm, "file", made) == before


def test_a_replaced_backup_snapshot_fails_on_its_guid_and_its_content(lab, vm):
    made = backup(lab, vm, NAME)
    assert not made.failed, dumps(made)
    target = target_of(lab, vm)
    props = dict(line.split("\t", 1) for line in zfs(
        "get", "-H", "-s", "local", "-o", "property,value", "all", "%s@%s" % (target, NAME)).splitlines())
    zfs("destroy", "%s@%s" % (target, NAME))
    zfs("set", "readonly=off", target)  # received read-only: whoever tampers turns that off first
    zfs("mount", target)
    lab.write_data(target, "data.bin", 1)  # other data under the same name, with the same properties
    zfs("unmount", target)
    zfs("snapshot", *[a for k, v in props.items() for a in ("-o", "%s=%s" % (k, v))], "%s@%s" % (target, NAME))
    before = backup_state(lab, vm, "dataset", made)

    res = drill_against_source(lab, vm)
    assert res.failed and res["outcome"] == "failed", dumps(res)
    assert "guid mismatch: the backup's data has guid %s, its manifest recorded" % before["guid"] in res["reason"]
    assert "the source snapshot %s on %s has guid" % (vm.disk(lab.compute_pool, 0) + "@" + NAME, COMPUTE) \
        in res["reason"], res["reason"]
    assert "content differs from the source snapshot" in res["reason"], res["reason"]
    assert res["cleanup"] == ["destroy scratch %s" % res["scratch"]], dumps(res)
    assert scratch_left(lab) == [] and backup_state(lab, vm, "dataset", made) == before


def test_a_source_that_differs_under_the_same_snapshot_name_fails(lab, vm):
    made = backup(lab, vm, NAME)
    assert not made.failed, dumps(made)
    disk = vm.disk(lab.compute_pool, 0)
    zfs("destroy", "%s@%s" % (disk, NAME))
    lab.write_data(disk, "data.bin", 2)
    take_snapshot(disk, NAME)
    before = backup_state(lab, vm, "dataset", made)

    res = drill_against_source(lab, vm)
    assert res.failed and res["outcome"] == "failed", dumps(res)
    assert "guid mismatch" in res["reason"] and "manifest recorded" not in res["reason"], res["reason"]
    assert "content differs from the source snapshot %s@%s on %s" % (disk, NAME, COMPUTE) in res["reason"]
    assert scratch_left(lab) == [] and backup_state(lab, vm, "dataset", made) == before
    restored = run_module("vmbackup.zfs.restore", {"zpool": lab.backup_pool, "backup": NAME, "vm_uuid": vm.uuid,
                                                   "target": disk})
    assert not restored.failed, dumps(restored)  # the backup itself is fine, and still restores


def test_a_wrong_expected_digest_and_no_reference_at_all_fail(lab, vm):
    assert not backup(lab, vm, NAME).failed
    zfs("destroy", "%s@%s" % (vm.disk(lab.compute_pool, 0), NAME))  # the source snapshot is gone
    assert source_digest(lab, vm)["found"] is False
    res = drill(lab, vm, expected_digest="ab" * 32)
    assert res.failed and "content differs from the digest recorded at its last good verification" in res["reason"]
    res = drill(lab, vm)
    assert res.failed and res["reason"].startswith("nothing to compare the content with"), dumps(res)
    assert res["digest"] and scratch_left(lab) == []


@pytest.mark.parametrize("stage", ["zfs receive", "tar"])
def test_sigterm_midway_destroys_the_scratch_and_fails(lab, vm, stage):
    assert not backup(lab, vm, NAME).failed
    outcome = {}
    args = {"zpool": lab.backup_pool, "backup": NAME, "vm_uuid": vm.uuid, "expected_digest": "ab" * 32,
            "bwlimit": 2 * 2**20}  # 8 MiB: some 4 s of receive, then some 4 s of hashing
    worker = threading.Thread(target=lambda: outcome.update(res=run_module("vmbackup.zfs.verify", args)))
    worker.start()
    pattern = ("zfs receive -u %s/backups/verify/" if stage == "zfs receive" else "tar -C .*%s/backups/verify/") \
        % lab.backup_pool
    deadline, found = time.monotonic() + 60, []
    while not found and time.monotonic() < deadline:
        found = pids_of(pattern)
        time.sleep(0.1)
    assert found, "the %s stage never started" % stage
    time.sleep(1)
    assert scratch_left(lab)  # the scratch dataset was there...
    os.kill(parent_of(found[0]), signal.SIGTERM)
    worker.join(120)
    res = outcome["res"]
    assert res.failed and res["outcome"] == "failed" and "signal %d" % signal.SIGTERM in res["reason"], dumps(res)
    # a killed `zfs receive` removes its half-received dataset itself, maybe before the module looks
    assert res["cleanup"] in ([], ["destroy scratch %s" % res["scratch"]]) if stage == "zfs receive" \
        else res["cleanup"] == ["destroy scratch %s" % res["scratch"]], dumps(res)
    assert scratch_left(lab) == []  # ...and is gone
    assert snapshots(target_of(lab, vm)) == [NAME]


def test_bad_options_are_refused_before_anything_runs(lab, vm):
    good = {"zpool": lab.backup_pool, "backup": NAME, "vm_uuid": vm.uuid}
    for bad, option in [({"expected_digest": "xyz"}, "expected_digest"), ({"backup": "x;rm"}, "backup"),
                        ({"source_guid": "12a"}, "source_guid"), ({"vm_uuid": "../etc"}, "vm_uuid"),
                        ({"source_digest": "a" * 64 + "\n" + "b"}, "source_digest")]:
        res = run_module("vmbackup.zfs.verify", dict(good, **bad))
        assert res.failed and res["msg"].startswith(option + ":"), dumps(res)


# -- the playbook -------------------------------------------------------------------------------------------
RESULT_KEYS = {"ok", "name", "vm_uuid", "disk_id", "outcome", "reason", "digest", "source_digest", "duration",
               "verified"}


def verify(inventory: str, vm: LabVM, *options: str, **extra) -> Run:
    extravars = {"node": BACKUP, "hostname": vm.hostname, "bkpname": NAME}
    extravars.update(extra)
    return Run("verify.yml", extravars, inventory, *options)


def test_playbook_verifies_against_the_source_then_against_the_recorded_digest(lab, vm, inventory):
    made = backup(lab, vm, NAME, type="file", compression="gzip")
    assert not made.failed, dumps(made)
    run = verify(inventory, vm)
    assert run.ok, run
    result = run.result
    assert RESULT_KEYS <= set(result), result
    assert result["ok"] is True and result["outcome"] == "passed" and result["compared_with"] == ["source"], result
    assert (result["name"], result["vm_uuid"], result["disk_id"]) == (NAME, vm.uuid, 1)
    assert result["digest"] == result["source_digest"] and result["verified"].endswith("Z")
    assert scratch_left(lab) == []

    destroy(vm.disk(lab.compute_pool, 0))  # the VM is gone: only the recorded digest is left to compare with
    gone = verify(inventory, vm, vm_uuid=vm.uuid, hostname="", expected_digest=result["digest"])
    assert gone.ok and gone.result["outcome"] == "passed", gone
    assert gone.result["compared_with"] == ["expected"] and gone.result["source_digest"] == result["digest"]
    wrong = verify(inventory, vm, vm_uuid=vm.uuid, hostname="", expected_digest="cd" * 32)
    assert not wrong.ok and wrong.result["ok"] is False and wrong.result["outcome"] == "failed", wrong
    assert "content differs from the digest recorded" in wrong.result["reason"] and wrong.result["verified"] is None
    assert scratch_left(lab) == []


def test_playbook_reports_a_damaged_file_and_check_mode_makes_nothing(lab, vm, inventory):
    made = backup(lab, vm, NAME, type="file")
    assert not made.failed, dumps(made)
    planned = verify(inventory, vm, "--check")
    assert planned.ok and planned.result["outcome"] is None and planned.result["check"] is True, planned
    assert planned.result["verified"] is None and "would receive" in planned.result["reason"], planned.result
    flip_middle_byte(made["file_path"])
    run = verify(inventory, vm, type=2)
    assert not run.ok and run.result["outcome"] == "failed", run
    assert run.result["reason"].startswith("checksum mismatch"), run.result
    assert scratch_left(lab) == []


@pytest.mark.parametrize("change,variable", [({"expected_digest": "abc"}, "expected_digest"),
                                             ({"bkpname": "latest"}, "bkpname"), ({"node": COMPUTE}, "node"),
                                             ({"expected_digest": "ab" * 32 + "\n"}, "expected_digest")])
def test_playbook_refuses_bad_variables_by_name(lab, vm, inventory, change, variable):
    run = verify(inventory, vm, **change)
    assert not run.ok and run.failures and run.failures[0][0].startswith("Check the"), run
    assert variable in run.failures[0][1]
