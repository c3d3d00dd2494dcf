"""The playbooks, run for real with ansible-playbook (through ansible-runner) on the test lab's pools: what
operators, AWX and the API run. Each ends with one vmbackup_result; bad variables are refused by name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import dataset_checksums, exists, snapshots, zfs
from playbook_env import BACKUP, COMPUTE, Run, lab_inventory

from vmbackup_lab.lab import new_vm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def inventory(lab, tmp_path):
    return lab_inventory(lab, tmp_path)


def backup(inventory: str, vm, bkpname: str | None = None, *options: str, **extra) -> Run:
    extravars = {"node": BACKUP, "hostname": vm.hostname, "bkpdef": "daily"}
    if bkpname:
        extravars["bkpname"] = bkpname
    extravars.update(extra)
    return Run("backup.yml", extravars, inventory, *options)


def restore(inventory: str, vm, bkpname: str, target=None, *options: str, **extra) -> Run:
    target = target or vm
    extravars = {"node": BACKUP, "hostname": vm.hostname, "bkpname": bkpname, "target_hostname": target.hostname,
                 "target_disk_id": 1}
    extravars.update(extra)
    return Run("restore.yml", extravars, inventory, *options)


def backup_target(lab, vm) -> str:
    return "%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)


# -- the whole chain --------------------------------------------------------------------------------------
def test_backup_change_backup_restore_gives_back_each_backups_data(lab, vm, inventory):
    disk = vm.disk(lab.compute_pool, 0)
    at_first = dataset_checksums(disk)
    first = backup(inventory, vm, "daily-20261128_010000")
    assert first.ok, first
    assert first.result["ok"] is True and first.result["name"] == "daily-20261128_010000"
    assert first.result["incremental"] is False and first.result["size"] > 8 * 2**20
    assert (first.result["vm_uuid"], first.result["disk_id"], first.result["compute_node"]) == (vm.uuid, 1, COMPUTE)
    assert first.result["target"] == backup_target(lab, vm) and first.result["manifest"]

    lab.write_data(disk, "changed.bin", 2)
    at_second = dataset_checksums(disk)
    second = backup(inventory, vm, "daily-20261128_020000")
    assert second.ok, second
    assert second.result["incremental"] is True and second.result["base"] == "daily-20261128_010000"
    assert 2 * 2**20 < second.result["size"] < 4 * 2**20
    assert second.result["pruned_source"] == [disk + "@daily-20261128_010000"]
    assert snapshots(backup_target(lab, vm)) == ["daily-20261128_010000", "daily-20261128_020000"]

    lab.write_data(disk, "after-the-backups.bin", 1)
    back = restore(inventory, vm, "daily-20261128_020000")
    assert back.ok, back
    assert back.result["target"] == disk and back.result["target_compute_node"] == COMPUTE
    assert dataset_checksums(disk) == at_second

    older = restore(inventory, vm, "daily-20261128_010000")
    assert older.ok, older
    assert dataset_checksums(disk) == at_first


def test_file_backup_with_compression_reports_its_file_and_checksum_and_restores(lab, vm, inventory):
    disk = vm.disk(lab.compute_pool, 0)
    before = dataset_checksums(disk)
    run = backup(inventory, vm, "weekly-20261128_030000", bkpdef="weekly", type=2, compression="zstd")
    assert run.ok, run
    path = run.result["file_path"]
    assert run.result["type"] == 2 and path.endswith("/%s/disk0/weekly-20261128_030000-full.zfs.zst" % vm.uuid)
    assert run.result["checksum"] == subprocess.run(["sha256sum", path], capture_output=True,
                                                    text=True).stdout.split()[0]
    assert run.result["size"] == os.path.getsize(path)
    assert snapshots(disk) == []  # a file backup is the base of nothing: its snapshot is gone from the source
    lab.write_data(disk, "later.bin", 1)
    back = restore(inventory, vm, "weekly-20261128_030000")
    assert back.ok and back.result["checksum_verified"] is True, back
    assert dataset_checksums(disk) == before


def test_backup_finds_the_vm_by_uuid_or_on_the_given_compute_node(lab, vm, inventory):
    by_uuid = Run("backup.yml", {"node": BACKUP, "vm_uuid": vm.uuid, "bkpdef": "daily",
                                 "bkpname": "daily-20261128_040000"}, inventory)
    assert by_uuid.ok and by_uuid.result["hostname"] == vm.hostname, by_uuid
    on_node = backup(inventory, vm, "daily-20261128_050000", compute_node=COMPUTE, hostname=vm.uuid)
    assert on_node.ok and on_node.result["incremental"] is True, on_node


def test_backup_of_the_second_disk(lab, inventory):
    machine = new_vm("two-%s.lab" % os.getpid(), disks=2)
    lab.create_vm(machine, data_mb=1)
    run = backup(inventory, machine, "daily-20261128_060000", disk_id=2)
    assert run.ok, run
    assert run.result["source"] == machine.disk(lab.compute_pool, 1) + "@daily-20261128_060000"
    assert exists("%s/backups/ds/%s-disk1" % (lab.backup_pool, machine.uuid))


def test_fsfreeze_without_a_known_guest_agent_still_backs_up_and_says_so(lab, vm, inventory):
    run = backup(inventory, vm, "daily-20261128_070000", fsfreeze=True)
    assert run.ok, run
    assert run.result["fsfreeze"]["frozen"] is False and "no guest agent socket" in run.result["fsfreeze"]["msg"]


def test_survey_answers_as_awx_sends_them_are_accepted(lab, vm, inventory):
    with open(os.path.join(REPO, "awx", "surveys", "backup.json")) as handle:
        survey = json.load(handle)
    answers = {q["variable"]: q["default"] for q in survey["spec"] if "default" in q}
    answers.update(node=BACKUP, hostname=vm.hostname, bkpdef="daily", zpool="")  # a blank optional answer
    answers.update(fsfreeze=False)  # typed, as an extra variable beside the survey
    run = Run("backup.yml", answers, inventory)
    assert run.ok and run.result["zpool"] == lab.backup_pool and run.result["type"] == 1, run


# -- check mode and tags ----------------------------------------------------------------------------------
def test_check_mode_backup_makes_nothing_and_says_full_then_incremental(lab, vm, inventory):
    disk = vm.disk(lab.compute_pool, 0)
    first = backup(inventory, vm, "daily-20261127_010000", "--check")
    assert first.ok and first.result["check"] is True, first
    assert first.result["incremental"] is False and first.result["base"] is None
    assert first.result["target"] == backup_target(lab, vm) and "zfs send" in first.result["cmd"]
    assert first.changed > 0 and "would send" in first.messages[-1] and "a full backup" in first.messages[-1]
    assert snapshots(disk) == [] and not exists(backup_target(lab, vm))

    assert backup(inventory, vm, "daily-20261127_020000").ok
    second = backup(inventory, vm, "daily-20261127_030000", "--check", "--diff")
    assert second.ok, second
    assert second.result["incremental"] is True and second.result["base"] == "daily-20261127_020000"
    assert "an incremental backup from @daily-20261127_020000" in second.messages[-1]
    assert snapshots(disk) == ["daily-20261127_020000"]
    assert snapshots(backup_target(lab, vm)) == ["daily-20261127_020000"]

    as_file = backup(inventory, vm, "weekly-20261127_040000", "--check", bkpdef="weekly", type=2,
                     compression="zstd")
    assert as_file.ok and as_file.result["file_path"].endswith("weekly-20261127_040000-full.zfs.zst"), as_file
    assert not os.path.exists(as_file.result["file_path"]) and snapshots(disk) == ["daily-20261127_020000"]


def test_check_mode_says_what_retention_will_delete_once_the_new_backup_exists(lab, vm, inventory):
    names = ["daily-20261126_0%d0000" % n for n in range(1, 5)]
    for name in names[:3]:
        assert backup(inventory, vm, name).ok
    planned = backup(inventory, vm, names[3], "--check", retention=2)
    assert planned.ok and planned.result["pruned"] == names[:2], planned
    assert "retention 2: would delete %s, %s" % tuple(names[:2]) in planned.messages[-1]
    assert snapshots(backup_target(lab, vm)) == names[:3]
    done = backup(inventory, vm, names[3], retention=2)
    assert done.ok and done.result["pruned"] == planned.result["pruned"], done


def test_check_mode_of_restore_delete_and_prune_changes_nothing(lab, vm, inventory):
    names = ["daily-20261125_0%d0000" % n for n in range(1, 3)]
    for name in names:
        assert backup(inventory, vm, name).ok
    disk = vm.disk(lab.compute_pool, 0)
    before = dataset_checksums(disk)
    lab.write_data(disk, "after.bin", 1)
    after = dataset_checksums(disk)
    back = restore(inventory, vm, names[0], None, "--check")
    assert back.ok and back.result["check"] is True and back.result["target"] == disk, back
    deleted = Run("delete.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpname": names[0]}, inventory, "--check")
    assert deleted.ok and deleted.result["destroyed"] == [names[0]] and deleted.result["check"] is True, deleted
    pruned = Run("prune.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpdef": "daily", "retention": 1,
                               "compute_node": COMPUTE}, inventory, "--check")
    assert pruned.ok and pruned.result["destroyed"] == [names[0]], pruned
    assert snapshots(backup_target(lab, vm)) == names and dataset_checksums(disk) == after != before


def test_tags_pick_the_steps_of_a_backup(lab, vm, inventory):
    disk = vm.disk(lab.compute_pool, 0)
    assert backup(inventory, vm, "daily-20261124_010000").ok
    only_check = backup(inventory, vm, "daily-20261124_020000", "--tags", "validate")
    assert only_check.ok and only_check.changed == 0 and only_check.result["target"] is None, only_check
    refused = backup(inventory, vm, "daily-20261124_020000", "--tags", "validate", disk_id=0)
    assert not refused.ok and refused.result["msg"].startswith("disk_id"), refused
    assert refused.failures[-1][1] == "Check the variables: " + refused.result["msg"], refused

    snapped = backup(inventory, vm, "daily-20261124_020000", "--tags", "snapshot")
    assert snapped.ok and snapped.result["target"] is None, snapped
    assert "Pull it to the backup node" not in snapped.tasks
    assert snapshots(disk) == ["daily-20261124_010000", "daily-20261124_020000"]
    assert snapshots(backup_target(lab, vm)) == ["daily-20261124_010000"]

    sent = backup(inventory, vm, "daily-20261124_020000", "--tags", "send", retention=1)
    assert sent.ok and sent.result["incremental"] is True and sent.result["pruned"] == [], sent
    assert snapshots(backup_target(lab, vm)) == ["daily-20261124_010000", "daily-20261124_020000"]

    unpruned = backup(inventory, vm, "daily-20261124_030000", "--skip-tags", "prune", retention=1)
    assert unpruned.ok and unpruned.result["pruned"] == [], unpruned
    assert len(snapshots(backup_target(lab, vm))) == 3


def test_skipping_the_step_of_restore_delete_or_prune_changes_nothing(lab, vm, inventory):
    names = ["daily-20261123_0%d0000" % n for n in range(1, 3)]
    for name in names:
        assert backup(inventory, vm, name).ok
    disk = vm.disk(lab.compute_pool, 0)
    lab.write_data(disk, "after.bin", 1)
    after = dataset_checksums(disk)
    back = restore(inventory, vm, names[0], None, "--skip-tags", "restore")
    assert back.ok and back.changed == 0 and back.result["restored"] is False, back
    assert "not restored" in back.messages[-1]
    deleted = Run("delete.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpname": names[0]}, inventory,
                  "--skip-tags", "delete")
    assert deleted.ok and deleted.changed == 0, deleted
    assert deleted.result["destroyed"] == deleted.result["absent"] == [], deleted
    pruned = Run("prune.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpdef": "daily", "retention": 1},
                 inventory, "--skip-tags", "prune")
    assert pruned.ok and pruned.changed == 0 and pruned.result["destroyed"] == [], pruned
    assert snapshots(backup_target(lab, vm)) == names and dataset_checksums(disk) == after


def test_no_playbook_task_hides_its_diff_or_output():
    """--diff shows what the modules return: no task turns diff off or hides its result."""
    for root, _dirs, files in os.walk(os.path.join(REPO, "playbooks")):
        for name in files:
            with open(os.path.join(root, name)) as handle:
                text = handle.read()
            assert not re.search(r"^\s*(diff|no_log):", text, re.M), name


# -- retention, prune, delete -----------------------------------------------------------------------------
def test_backup_prunes_to_the_retention_and_keeps_the_incremental_base(lab, vm, inventory):
    names = ["daily-20261129_0%d0000" % n for n in range(1, 5)]
    for name in names[:3]:
        assert backup(inventory, vm, name).ok
    run = backup(inventory, vm, names[3], retention=2)
    assert run.ok, run
    assert run.result["pruned"] == names[:2] and run.result["retention"] == 2
    assert snapshots(backup_target(lab, vm)) == names[2:]


def test_prune_playbook_keeps_the_newest_and_a_second_prune_changes_nothing(lab, vm, inventory):
    names = ["daily-20261130_0%d0000" % n for n in range(1, 4)]
    for name in names:
        assert backup(inventory, vm, name).ok
    first = Run("prune.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpdef": "daily", "retention": 1,
                              "compute_node": COMPUTE}, inventory)
    assert first.ok, first
    assert first.result["destroyed"] == names[:2] and first.result["remaining"] == names[2:]
    assert snapshots(backup_target(lab, vm)) == names[2:]
    again = Run("prune.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpdef": "daily", "retention": 1,
                              "compute_node": COMPUTE}, inventory)
    assert again.ok and again.result["destroyed"] == [] and again.changed == 0, again
    assert snapshots(backup_target(lab, vm)) == names[2:]


def test_prune_with_retention_zero_keeps_everything(lab, vm, inventory):
    assert backup(inventory, vm, "daily-20261201_010000").ok
    assert backup(inventory, vm, "daily-20261201_020000").ok
    run = Run("prune.yml", {"node": BACKUP, "vm_uuid": vm.uuid, "bkpdef": "daily", "retention": 0}, inventory)
    assert run.ok and run.result["destroyed"] == [] and run.changed == 0, run
    assert len(snapshots(backup_target(lab, vm))) == 2


def test_delete_several_backups_by_list_or_commas_and_again_is_a_no_op(lab, vm, inventory):
    names = ["daily-20261202_0%d0000" % n for n in range(1, 5)]
    for name in names:
        assert backup(inventory, vm, name).ok
    first = Run("delete.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpname": names[:2]}, inventory)
    assert first.ok and first.result["destroyed"] == names[:2] and first.result["size"] > 0, first
    second = Run("delete.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpname": "%s, %s" % (names[1], names[2])},
                 inventory)
    assert second.ok and second.result["destroyed"] == [names[2]] and second.result["absent"] == [names[1]], second
    again = Run("delete.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpname": names[2]}, inventory)
    assert again.ok and again.result["destroyed"] == [] and again.changed == 0, again
    assert snapshots(backup_target(lab, vm)) == [names[3]]


def test_deleting_the_base_by_name_makes_the_next_backup_a_full_one(lab, vm, inventory):
    """An operator's explicit delete may drop the incremental base (retention never does)."""
    assert backup(inventory, vm, "daily-20261203_010000").ok
    assert backup(inventory, vm, "daily-20261203_020000").ok
    run = Run("delete.yml", {"node": BACKUP, "hostname": vm.hostname, "bkpname": "daily-20261203_020000",
                             "compute_node": COMPUTE}, inventory)
    assert run.ok and run.result["destroyed"] == ["daily-20261203_020000"], run
    assert snapshots(backup_target(lab, vm)) == ["daily-20261203_010000"]
    after = backup(inventory, vm, "daily-20261203_030000")
    assert after.ok and after.result["incremental"] is False, after
    assert snapshots(backup_target(lab, vm)) == ["daily-20261203_030000"]


def test_file_backups_are_deleted_with_their_manifest(lab, vm, inventory):
    made = backup(inventory, vm, "weekly-20261204_010000", bkpdef="weekly", type=2, compression="1")
    assert made.ok, made
    run = Run("delete.yml", {"node": BACKUP, "vm_uuid": vm.uuid, "bkpname": "weekly-20261204_010000"}, inventory)
    assert run.ok and run.result["destroyed"] == ["weekly-20261204_010000"], run
    assert not os.path.exists(made.result["file_path"]) and not os.path.exists(made.result["file_path"] + ".json")


# -- restore refusals -------------------------------------------------------------------------------------
def test_restore_refuses_a_running_vm_and_a_disk_of_another_size(lab, vm, inventory):
    assert backup(inventory, vm, "daily-20261205_010000").ok
    running = new_vm("running-%s.lab" % os.getpid(), state="running")
    bigger = new_vm("bigger-%s.lab" % os.getpid(), size_mb=512)
    lab.create_vm(running, data_mb=1)
    lab.create_vm(bigger, data_mb=1)
    run = restore(inventory, vm, "daily-20261205_010000", target=running)
    assert not run.ok and run.failures[-1][1].startswith("target_hostname: VM %s is running" % running.hostname), run
    run = restore(inventory, vm, "daily-20261205_010000", target=bigger)
    assert not run.ok and run.failures[-1][1].startswith("target_disk_id: disk 1 of %s has" % bigger.hostname), run
    run = restore(inventory, vm, "daily-20261205_010000", target_disk_id=2)
    assert not run.ok and run.failures[-1][1].startswith("target_disk_id: VM %s has no disk 2" % vm.hostname), run


def test_restore_into_another_vm_of_the_same_size(lab, vm, inventory):
    before = dataset_checksums(vm.disk(lab.compute_pool, 0))
    assert backup(inventory, vm, "daily-20261206_010000").ok
    other = new_vm("other-%s.lab" % os.getpid())
    lab.create_vm(other, data_mb=1)
    run = restore(inventory, vm, "daily-20261206_010000", target=other)
    assert run.ok and run.result["target_vm_uuid"] == other.uuid, run
    assert dataset_checksums(other.disk(lab.compute_pool, 0)) == before
    # the disk keeps its own identity (properties), not the backed-up VM's
    assert zfs("get", "-H", "-o", "value", "vmbackup:hostname", other.disk(lab.compute_pool, 0)).strip() == \
        other.hostname


def test_restore_of_a_backup_that_is_not_there_names_bkpname(lab, vm, inventory):
    run = restore(inventory, vm, "daily-20261207_010000")
    assert not run.ok and run.failures[-1][1].startswith("bkpname: no backup daily-20261207_010000"), run


# -- variables refused before anything runs ---------------------------------------------------------------
GOOD = {
    "backup.yml": {"node": BACKUP, "hostname": "x.lab", "bkpdef": "daily"},
    "restore.yml": {"node": BACKUP, "hostname": "x.lab", "bkpname": "daily-20261128_010000",
                    "target_hostname": "x.lab", "target_disk_id": 1},
    "delete.yml": {"node": BACKUP, "hostname": "x.lab", "bkpname": "daily-20261128_010000"},
    "prune.yml": {"node": BACKUP, "hostname": "x.lab", "bkpdef": "daily", "retention": 3},
}
BAD = [
    ("backup.yml", {"bkpdef": None}, "bkpdef"),
    ("backup.yml", {"bkpdef": "far-too-long"}, "bkpdef"),
    ("backup.yml", {"node": None}, "node"),
    ("backup.yml", {"node": COMPUTE}, "node"),
    ("backup.yml", {"node": "nowhere"}, "node"),
    ("backup.yml", {"hostname": None}, "hostname"),
    ("backup.yml", {"vm_uuid": "not-a-uuid"}, "vm_uuid"),
    ("backup.yml", {"compute_node": BACKUP}, "compute_node"),
    ("backup.yml", {"disk_id": 0}, "disk_id"),
    ("backup.yml", {"disk_id": "one"}, "disk_id"),
    ("backup.yml", {"type": 3}, "type"),
    ("backup.yml", {"compression": "rar"}, "compression"),
    ("backup.yml", {"bwlimit": -1}, "bwlimit"),
    ("backup.yml", {"retention": 70000}, "retention"),
    ("backup.yml", {"fsfreeze": "maybe"}, "fsfreeze"),
    ("backup.yml", {"zpool": "-o evil"}, "zpool"),
    ("backup.yml", {"bkpname": "daily; rm -rf /"}, "bkpname"),
    ("backup.yml", {"bkpdef": "daily\n"}, "bkpdef"),
    ("backup.yml", {"vm_uuid": "9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a\n"}, "vm_uuid"),
    ("backup.yml", {"zpool": "backup\n"}, "zpool"),
    ("backup.yml", {"bkpname": "daily-20261128_010000\n"}, "bkpname"),
    ("restore.yml", {"target_disk_id": None}, "target_disk_id"),
    ("restore.yml", {"target_hostname": None}, "target_hostname"),
    ("restore.yml", {"force": "perhaps"}, "force"),
    ("restore.yml", {"bkpname": "latest"}, "bkpname"),
    ("restore.yml", {"target_vm_uuid": "9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a\n"}, "target_vm_uuid"),
    ("delete.yml", {"bkpname": ""}, "bkpname"),
    ("delete.yml", {"bkpname": ["daily-20261128_010000", "../etc"]}, "bkpname"),
    ("prune.yml", {"retention": None}, "retention"),
    ("prune.yml", {"retention": -2}, "retention"),
]


def bad_id(playbook: str, change: dict) -> str:
    newline = any("\n" in str(value) for value in change.values())
    return "%s-%s%s" % (playbook[:-4], "-".join(change), "-newline" if newline else "")


@pytest.mark.parametrize("playbook,change,variable", BAD, ids=[bad_id(p, c) for p, c, _v in BAD])
def test_bad_variables_are_refused_by_name_before_anything_runs(lab, inventory, playbook, change, variable):
    extravars = {k: v for k, v in dict(GOOD[playbook], **change).items() if v is not None}
    run = Run(playbook, extravars, inventory)
    assert not run.ok and run.failures, run
    task, message = run.failures[0]
    if playbook == "backup.yml":  # each backup is checked alone, reported, and then the run fails
        task, message = run.result["failed_task"], run.result["msg"]
        assert run.result["ok"] is False and run.failures == [("Fail with the reason", "%s: %s" % (task, message))]
    assert task.startswith("Check the"), run  # the first tasks; nothing ran on a node
    assert re.search(r"\b%s\b" % variable, message), message
    assert run.changed == 0


# Values each name pattern must take or refuse; a trailing newline is refused by every one of them.
NAME_SAMPLES = {
    "uuid": ("UUID_RE", ["9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a", "9F2B1C4E-3B8A-4C1E-9A7D-2F0E5D6C7B8A"],
             ["9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a\n", "9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8", "x" * 36, ""]),
    "pool": ("POOL_RE", ["zones", "backup.1", "b:2_x-y"], ["zones\n", "-o", "1zones", "zones/x", ""]),
    "definition": ("DEFINITION_RE", ["daily", "d", "w.1_-x8"], ["daily\n", "far-too-long", "-daily", "da ily", ""]),
    "backup_name": ("BACKUP_NAME_RE", ["daily-20261128_040000"],
                    ["daily-20261128_040000\n", "daily-2026112_040000", "latest", "daily-20261128_040000x"]),
}


@pytest.mark.parametrize("name", sorted(NAME_SAMPLES))
def test_the_one_rule_set_takes_and_refuses_whole_names(name):
    """The playbooks check names with the collection's patterns, through one filter (report.variable_problems,
    used by tasks/validate.yml and batch_items; no Jinja copy): re.match, as it calls them, takes and refuses
    what re.fullmatch does, a trailing newline included."""
    from ansible_collections.vmbackup.zfs.plugins.filter import report
    from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
    pattern, good, bad = NAME_SAMPLES[name]
    for value in good:
        assert getattr(layout, pattern).match(value) and getattr(layout, pattern).fullmatch(value), value
    for value in bad:
        assert not getattr(layout, pattern).match(value) and not getattr(layout, pattern).fullmatch(value), \
            repr(value)
    variable = {"uuid": "vm_uuid", "pool": "zpool", "definition": "bkpdef", "backup_name": "bkpname"}[name]
    rules = {"backup_nodes": ["b"], "compute_nodes": ["c"]}
    base = {"node": "b", "zpool": "zones", "bkpdef": "daily", "hostname": "web"}
    names = list(base) + [variable]
    for value in good:
        assert report.variable_problems(dict(base, **{variable: value}), names, rules) == [], value
    for value in bad:
        problems = report.variable_problems(dict(base, **{variable: value}), names, rules)
        assert value == "" and variable in ("vm_uuid",) or problems and problems[0].startswith(variable), \
            (repr(value), problems)
    if name == "pool":  # the length, which no pattern says: the API's rule (layout.invalid_pool) is the playbooks'
        longest = "p" * layout.MAX_NAME
        assert report.variable_problems(dict(base, zpool=longest), names, rules) == []
        assert report.variable_problems(dict(base, zpool=longest + "p"), names, rules)[0].startswith("zpool")
    with open(os.path.join(REPO, "playbooks", "vars", "common.yml")) as handle:
        assert not [k for k in yaml.safe_load(handle) if k.endswith("_re")]  # no second home


def test_every_playbook_runs_from_a_checkout_with_the_default_inventory():
    """ansible-playbook from the repository root finds the collection and the lab inventory (ansible.cfg)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    tool = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    for playbook in ("backup", "restore", "delete", "prune", "discover"):
        proc = subprocess.run([tool, "--syntax-check", "playbooks/%s.yml" % playbook], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
