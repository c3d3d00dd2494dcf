"""backup.yml with `backups`: one run backs up many disks, on several compute nodes, the same way as one
backup each; a backup that cannot be made is reported and does not stop the others."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import time
import uuid

import pytest
import yaml
from conftest import TAG, destroy, snapshots, zfs
from playbook_env import BACKUP, Run, lab_inventory
from test_snapshot import FakeGuestAgent

from vmbackup_lab import lab as labmod
from vmbackup_lab.lab import ensure_sshd, new_vm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPUTE2 = "lab-compute2"


class GuestAgent(FakeGuestAgent):
    """The stand-in guest agent, answering each connection in turn (one per snapshot)."""

    def run(self) -> None:
        while True:
            super().run()


@pytest.fixture(scope="module")
def second_node(lab):
    """A second compute node: a pool of its own, reached by the backup node over the lab's sshd."""
    other = labmod.Lab(directory=lab.directory, compute_pool=TAG + "z2", backup_pool=lab.backup_pool,
                       pool_size="1G")
    other.create_pool(other.compute_pool)
    access = ensure_sshd("/var/tmp/vmbackup-ssh")
    host_vars = {"vmbackup_pool": other.compute_pool, "vmbackup_backend": "zfs",
                 "vmbackup_ssh_host": access.host, "vmbackup_ssh_port": access.port,
                 "vmbackup_ssh_key": access.key, "vmbackup_ssh_user": access.user,
                 "vmbackup_ssh_options": list(access.options)}
    yield other, host_vars
    if not os.environ.get("VMBACKUP_TEST_KEEP"):
        subprocess.run(["zpool", "destroy", "-f", other.compute_pool], capture_output=True)
        if os.path.exists(other.image(other.compute_pool)):
            os.remove(other.image(other.compute_pool))


@pytest.fixture
def inventory(lab, tmp_path, second_node):
    return lab_inventory(lab, tmp_path, more_compute={COMPUTE2: second_node[1]})


def fresh_vm(lab, prefix: str, disks: int = 1):
    machine = new_vm("%s-%s.lab" % (prefix, uuid.uuid4().hex[:6]), disks=disks)
    lab.create_vm(machine, data_mb=2)
    return machine


def item(vm, bkpname: str, **extra) -> dict:
    return dict({"node": BACKUP, "hostname": vm.hostname, "bkpdef": bkpname.split("-")[0], "bkpname": bkpname},
                **extra)


def key(vm, disk_id: int, bkpname: str) -> str:
    return "%s:%d:%s" % (vm.uuid, disk_id, bkpname)


# What differs between two runs of the same backup: times, sizes, the new snapshot's guid, and so the
# checksum of a stream that carries it, and the temporary file's name.
UNSTABLE = {"time", "size", "stream_size", "created", "guid", "checksum"}


def stable(value):
    """A record or manifest without what differs from one run to the next."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in UNSTABLE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return re.sub(r"\.part-\d+", ".part-N", value) if isinstance(value, str) else value


def manifest(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def forget(lab, record: dict) -> None:
    """Remove a backup and its snapshot, so that the same backup can be made again from scratch."""
    if record["file_path"]:
        os.remove(record["file_path"])
    else:
        destroy(record["target"])
    os.remove(record["manifest"])
    dataset, name = record["source"].split("@")
    if name in snapshots(dataset):  # a dataset backup's snapshot stays on the source as the next base
        zfs("destroy", record["source"])


def test_a_batch_of_three_disks_gives_the_records_and_manifests_of_three_single_backups(lab, second_node,
                                                                                           inventory):
    other, _host_vars = second_node
    frozen, two_disks, remote = fresh_vm(lab, "frz"), fresh_vm(lab, "two", disks=2), fresh_vm(other, "far")
    agent = GuestAgent(frozen.disk(lab.compute_pool, 0) + "@daily-20261210_010000")
    agent.start()
    zfs("set", "vmbackup:qga_socket=" + agent.path, frozen.disk(lab.compute_pool, 0))
    items = [item(frozen, "daily-20261210_010000", fsfreeze=True, retention=3),
             item(two_disks, "weekly-20261210_010000", disk_id=2, type=2, compression="zstd"),
             item(remote, "daily-20261210_010000", compute_node=COMPUTE2)]
    keys = [key(frozen, 1, "daily-20261210_010000"), key(two_disks, 2, "weekly-20261210_010000"),
            key(remote, 1, "daily-20261210_010000")]

    started = time.monotonic()
    singles = [Run("backup.yml", one, inventory) for one in items]
    single_time = time.monotonic() - started
    for run in singles:
        assert run.ok and run.result["ok"], run
    records = {k: run.result["backups"][k] for k, run in zip(keys, singles, strict=True)}
    manifests = {k: manifest(r["manifest"]) for k, r in records.items()}
    assert [c for c, _snap in agent.log if c != "guest-sync"] == ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]
    for record in records.values():
        forget(lab, record)

    agent.log.clear()
    started = time.monotonic()
    batch = Run("backup.yml", {"backups": items}, inventory)
    batch_time = time.monotonic() - started
    print("\n3 single runs: %.1f s; one batch of 3: %.1f s" % (single_time, batch_time))
    assert batch.ok and batch.result["ok"] is True, batch
    assert list(batch.result["backups"]) == keys
    for k in keys:
        assert stable(batch.result["backups"][k]) == stable(records[k]), k
        assert stable(manifest(batch.result["backups"][k]["manifest"])) == stable(manifests[k]), k
    made = batch.result["backups"]
    assert made[keys[0]]["fsfreeze"]["frozen"] is True and made[keys[0]]["fsfreeze"]["thawed"] is True
    assert [(c, snap) for c, snap in agent.log if c != "guest-sync"] == [("guest-fsfreeze-freeze", False),
                                                                       ("guest-fsfreeze-thaw", True)]
    assert made[keys[1]]["file_path"].endswith("/disk1/weekly-20261210_010000-full.zfs.zst")
    assert made[keys[2]]["compute_node"] == COMPUTE2 and made[keys[2]]["cmd"].startswith("ssh ")
    assert snapshots(made[keys[2]]["target"]) == ["daily-20261210_010000"]


def test_a_batch_makes_the_backups_it_can_and_reports_why_not_the_others(lab, inventory):
    first, second = fresh_vm(lab, "ok1"), fresh_vm(lab, "ok2")
    ghost = str(uuid.uuid4())
    items = [item(first, "daily-20261211_010000"), item(second, "daily-20261211_010000"),
             {"node": BACKUP, "vm_uuid": ghost, "bkpdef": "daily", "bkpname": "daily-20261211_010000"},
             item(first, "daily-20261211_010000", disk_id=0)]
    run = Run("backup.yml", {"backups": items}, inventory)
    assert not run.ok and run.result["ok"] is False, run
    made = run.result["backups"]
    assert made[key(first, 1, "daily-20261211_010000")]["ok"] is True
    assert made[key(second, 1, "daily-20261211_010000")]["ok"] is True
    for vm in (first, second):
        assert snapshots("%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)) == ["daily-20261211_010000"]
    missing = made["%s:1:daily-20261211_010000" % ghost]
    assert missing["ok"] is False and missing["failed_task"] == "Find the VM and its disk", missing
    assert missing["msg"].startswith("backups[2].vm_uuid: VM '%s' not found on the compute nodes" % ghost)
    refused = made["%s:0:daily-20261211_010000" % first.hostname]  # refused before its VM was looked for
    assert refused["ok"] is False and refused["failed_task"] == "Check the variables", refused
    assert refused["msg"] == "backups[3].disk_id: 0 is not a disk number (they start at 1)"
    assert run.failures[-1][1].startswith("2 of 4 backups failed: %s:1:daily-20261211_010000: " % ghost), run


def test_retention_in_a_batch_leaves_that_many_backups_and_what_is_protected(lab, inventory):
    kept_two, kept_one = fresh_vm(lab, "ret2"), fresh_vm(lab, "ret1")
    for n in range(1, 4):
        assert Run("backup.yml", item(kept_two, "daily-20261212_0%d0000" % n), inventory).ok
    for n in range(1, 3):
        assert Run("backup.yml", item(kept_one, "daily-20261212_0%d0000" % n), inventory).ok
    items = [item(kept_two, "daily-20261212_040000", retention=2),
             item(kept_one, "daily-20261212_030000", retention=1, protect=["daily-20261212_010000"])]
    run = Run("backup.yml", {"backups": items}, inventory)
    assert run.ok, run
    assert snapshots("%s/backups/ds/%s-disk0" % (lab.backup_pool, kept_two.uuid)) == \
        ["daily-20261212_030000", "daily-20261212_040000"]
    assert run.result["backups"][key(kept_two, 1, "daily-20261212_040000")]["pruned"] == \
        ["daily-20261212_010000", "daily-20261212_020000"]
    assert snapshots("%s/backups/ds/%s-disk0" % (lab.backup_pool, kept_one.uuid)) == \
        ["daily-20261212_010000", "daily-20261212_030000"]
    assert run.result["backups"][key(kept_one, 1, "daily-20261212_030000")]["pruned"] == ["daily-20261212_020000"]


def test_a_batch_of_one_reports_what_a_single_backup_reports(lab, inventory, tmp_path):
    vm = fresh_vm(lab, "one")
    progress = tmp_path / "progress.json"  # top-level progress_file, as the API gives a single backup's item
    single = Run("backup.yml", item(vm, "daily-20261213_010000", progress_file=str(progress)), inventory)
    batch = Run("backup.yml", {"backups": [item(vm, "daily-20261213_020000")]}, inventory)
    assert single.ok and batch.ok, (single, batch)
    assert json.loads(progress.read_text())["bytes"] > 0
    assert set(batch.result) == set(single.result)
    record = batch.result["backups"][key(vm, 1, "daily-20261213_020000")]
    assert {k: batch.result[k] for k in record} == record
    assert batch.result["name"] == "daily-20261213_020000" and batch.result["incremental"] is True
    assert batch.result["base"] == "daily-20261213_010000"


def test_top_level_variables_are_the_batch_items_defaults_and_check_mode_plans_each(lab, inventory):
    first, second = fresh_vm(lab, "chk1"), fresh_vm(lab, "chk2")
    run = Run("backup.yml", {"node": BACKUP, "bkpdef": "daily", "type": 2, "vmbackup_parallel": 1,
                             "backups": [{"hostname": first.hostname}, {"vm_uuid": second.uuid, "type": 1}]},
              inventory, "--check")
    assert run.ok and run.result["check"] is True, run
    first_record, second_record = run.result["backups"].values()
    assert first_record["type"] == 2 and first_record["file_path"] and first_record["name"].startswith("daily-")
    assert second_record["type"] == 1 and second_record["incremental"] is False and "zfs send" in second_record["cmd"]
    assert snapshots(first.disk(lab.compute_pool, 0)) == [] == snapshots(second.disk(lab.compute_pool, 0))
    assert "would send" in run.messages[-1] and first.uuid in run.messages[-1]


def test_each_item_is_checked_alone_and_a_repeated_disk_and_name_is_refused():
    """batch_items (collection/plugins/filter/report.py) without a run: the messages name the item and the variable."""
    spec = importlib.util.spec_from_file_location(
        "report", os.path.join(REPO, "collection", "plugins", "filter", "report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    with open(os.path.join(REPO, "playbooks", "vars", "argument_specs.yml")) as handle:
        options = yaml.safe_load(handle)["vmbackup_argument_specs"]["backup"]["options"]
    rules = {"backup_nodes": [BACKUP], "compute_nodes": ["lab-compute"], "zpools": {BACKUP: "bkp"},
             "time": 1797210000}  # 2026-12-14T01:00:00Z
    given = [{"hostname": "a.lab", "vmbackup_progress_file": "/tmp/a.json"}, {"hostname": "a.lab"}, "a.lab",
             {"hostname": "b.lab", "colour": "red"}, {"hostname": "c.lab", "disk_id": "two"}, {"bkpdef": "x" * 9}]
    items = report.batch_items(given, options, rules, {"node": BACKUP, "bkpdef": "daily", "hostname": "no.lab"})
    assert [(i["key"], i["problems"]) for i in items[:3]] == [
        ("a.lab:1:daily-20261214_010000", ""),
        ("backups[1]", "backups[1]: the same disk and backup name as backups[0]"),
        ("backups[2]", "backups[2]: not a dict of a backup's variables")]
    assert items[0]["progress_file"] == "/tmp/a.json" and items[0]["zpool"] == "bkp" and "hostname" in items[0]
    assert items[0]["created"] == "2026-12-14T01:00:00.000Z"  # the one time format (layout.utc_stamp)
    assert items[3]["problems"].startswith("backups[3].colour: not a variable of a backup")
    assert items[4]["problems"].startswith("backups[4]: argument 'disk_id' is of type")
    assert items[5]["problems"].split("; ") == [  # hostname is each item's own: the top-level one is not shared
        "backups[5].hostname: give the VM's hostname or uuid (or vm_uuid)",
        "backups[5].bkpdef: 'xxxxxxxxx' is not a definition name (1 to 8 letters, digits or '._-', starting with a "
        "letter or digit)"]


def test_a_backup_node_that_does_not_answer_fails_its_backups_alone(lab, tmp_path, second_node):
    inventory = lab_inventory(lab, tmp_path, more_compute={COMPUTE2: second_node[1]})
    with open(inventory) as handle:
        hosts = yaml.safe_load(handle)
    hosts["all"]["children"]["backup"]["hosts"]["lab-gone"] = {
        "ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1, "vmbackup_zpool": lab.backup_pool}
    with open(inventory, "w") as handle:
        yaml.safe_dump(hosts, handle)
    there, gone = fresh_vm(lab, "thr"), fresh_vm(lab, "gon")
    run = Run("backup.yml", {"backups": [item(gone, "daily-20261215_010000", node="lab-gone"),
                                         item(there, "daily-20261215_010000")]}, inventory)
    assert not run.ok, run
    failed = run.result["backups"][key(gone, 1, "daily-20261215_010000")]
    assert failed["ok"] is False and failed["msg"].startswith("node: lab-gone is unreachable"), failed
    assert run.result["backups"][key(there, 1, "daily-20261215_010000")]["ok"] is True, run
