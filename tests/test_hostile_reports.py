"""What a compromised node reports never takes another node's VM: a uuid two nodes report in one discovery is
refused for both (records kept, a log line, a vm_conflict event), and a uuid moves only once its node answered
without it. Discovery's apply step on a real store, with the reports a node would send (the playbooks that
gather them run in tests/test_api_discovery.py)."""

from __future__ import annotations

import logging
import uuid as uuidlib

from vmbackup.app.discovery import Discovery
from vmbackup.domain.events import Events
from vmbackup.store.store import Store


def report(vm_uuid: str, hostname: str, pool: str) -> dict:
    return {"uuid": vm_uuid, "hostname": hostname, "brand": "kvm", "state": "stopped",
            "disks": [{"disk_id": 1, "dataset": "%s/%s-disk0" % (pool, vm_uuid), "size": 2**30}]}


def discovery(tmp_path) -> tuple[Discovery, list]:
    events, seen = Events(), []
    events.subscribe(lambda kind, data: seen.append((kind, data)))
    return Discovery(Store(str(tmp_path)), runner=None, inventory="", events=events), seen


def test_a_uuid_two_nodes_report_is_refused_for_both_and_kept_where_it_was(tmp_path, caplog):
    found, seen = discovery(tmp_path)
    victim = str(uuidlib.uuid4())
    assert found.apply({"node-d": [report(victim, "db.lab", "zones")]}, {"node-d", "node-c"})["vms"] == 1
    caplog.set_level(logging.WARNING, "vmbackup")
    counts = found.apply({"node-d": [report(victim, "db.lab", "zones")],
                          "node-c": [report(victim, "evil.lab", "evil")]}, {"node-d", "node-c"})
    assert counts == {"vms": 0, "skipped": 2, "conflicts": 1}
    held = found.store.get_vm(victim)
    assert (held["node"], held["hostname"], held["disks"][0]["dataset"]) == ("node-d", "db.lab",
                                                                             "zones/%s-disk0" % victim)
    assert seen == [("vm_conflict", {"vm_uuid": victim, "nodes": ["node-c", "node-d"]})]
    assert any("reported by 2 nodes (node-c, node-d)" in r.message for r in caplog.records)


def test_a_uuid_moves_only_once_its_node_answered_without_it(tmp_path):
    found, seen = discovery(tmp_path)
    vm = str(uuidlib.uuid4())
    found.apply({"node-a": [report(vm, "web.lab", "zones")]}, {"node-a", "node-b"})
    # node-a does not answer this time: node-b's claim waits.
    counts = found.apply({"node-b": [report(vm, "web.lab", "zones")]}, {"node-a", "node-b"})
    assert counts["skipped"] == 1 and found.store.get_vm(vm)["node"] == "node-a"
    # node-a answers without it: a migration.
    found.apply({"node-a": [], "node-b": [report(vm, "web.lab", "zones")]}, {"node-a", "node-b"})
    assert found.store.get_vm(vm)["node"] == "node-b" and seen == []


def test_a_node_gone_from_the_inventory_hands_its_vms_over(tmp_path):
    found, _seen = discovery(tmp_path)
    vm = str(uuidlib.uuid4())
    found.apply({"old": [report(vm, "web.lab", "zones")]}, {"old", "new"})
    found.apply({"new": [report(vm, "web.lab", "zones")]}, {"new"})
    assert found.store.get_vm(vm)["node"] == "new"


def test_a_guest_named_after_another_vms_uuid_does_not_stand_in_its_way(lab, tmp_path):
    """The tenant of `impostor` names its VM with the victim's uuid: backups of the victim by uuid still find
    the victim alone, on the playbooks' path (vm_info and the batch's lookup)."""
    from playbook_env import BACKUP, Run, lab_inventory

    from vmbackup_lab.lab import LabVM
    victim = LabVM(str(uuidlib.uuid4()), "victim-%s.lab" % uuidlib.uuid4().hex[:6])
    impostor = LabVM(str(uuidlib.uuid4()), victim.uuid)
    for vm in (victim, impostor):
        lab.create_vm(vm, data_mb=1)
    inventory = lab_inventory(lab, tmp_path)
    run = Run("backup.yml", {"node": BACKUP, "vm_uuid": victim.uuid, "bkpdef": "daily",
                             "bkpname": "daily-20261205_090000"}, inventory)
    assert run.ok and run.result["hostname"] == victim.hostname, run
    assert run.result["source"].startswith(victim.disk(lab.compute_pool, 0) + "@")
    by_hostname = Run("backup.yml", {"node": BACKUP, "hostname": victim.uuid, "bkpdef": "daily",
                                     "bkpname": "daily-20261205_100000"}, inventory)
    assert by_hostname.ok and by_hostname.result["vm_uuid"] == victim.uuid, by_hostname  # a uuid is a uuid


# -- sync: what a backup node lists is only its word ----------------------------------------------------------
def listed(vm_uuid: str, name: str, node_pool: str = "bkp", **changes) -> dict:
    entry = {"name": name, "vm_uuid": vm_uuid, "definition": name.split("-")[0], "disk_id": 1, "type": "dataset",
             "hostname": "web.lab", "created": "2026-12-05T01:00:00Z", "size": 2**20,
             "path": "%s/backups/ds/%s-disk0@%s" % (node_pool, vm_uuid, name)}
    entry.update(changes)
    return entry


def synced(store, node: str, entries: list, adopt: bool = False, limit: int = 1000):
    from vmbackup.app import sync
    from vmbackup.engine.runner import RunResult
    run = RunResult("successful", 0, {"nodes": {node: {"bkp": entries}}})
    return sync.apply(store, [{"node": node, "pools": ["bkp"]}], run, adopt=adopt, limit=limit)


def test_sync_imports_only_what_that_node_could_have_made(tmp_path, caplog):
    found, _seen = discovery(tmp_path)
    store = found.store
    mine, other, deleted = (str(uuidlib.uuid4()) for _ in range(3))
    found.apply({"c1": [report(mine, "web.lab", "zones"), report(other, "db.lab", "zones")]}, {"c1"})
    caplog.set_level(logging.WARNING, "vmbackup")
    nested = listed(mine, "daily-20261205_010000")
    nested["path"] = "bkp/backups/ds/%s-disk0/evil@daily-20261205_010000" % mine
    summary = synced(store, "b1", [
        listed(mine, "daily-20261205_020000"),                                   # what b1 could have made
        listed(other, "daily-20991231_230000", created="2099-12-31T23:00:00Z"),  # from the future
        nested,                                                                  # below a backup dataset
        listed(deleted, "daily-20261205_030000"),                                # a VM nobody reports
        listed(mine, "file-20261205_040000", type="file",                       # a file outside its folder
               path="/bkp/backups/file/%s/disk0/../../../etc/file-20261205_040000-full.zfs" % other)])
    assert summary.imported == ["web.lab/daily-20261205_020000"], summary
    assert len(summary.skipped) == 4
    said = " ".join(r.message for r in caplog.records)
    for why in ("is in the future", "is not a snapshot of bkp/backups/ds/%s-disk0" % mine,
                "no compute node reports VM %s" % deleted, "is not a backup file in a folder"):
        assert why in said, why
    assert "node b1 pool bkp" in said

    # A second record of a backup another node holds: refused.
    again = synced(store, "b2", [listed(mine, "daily-20261205_020000")])
    assert again.imported == [] and store.get_backup(mine, 1, "daily-20261205_020000")["node"] == "b1"
    # The operator adopts the deleted VM's backups by saying so.
    adopted = synced(store, "b1", [listed(deleted, "daily-20261205_030000")], adopt=True)
    assert adopted.imported == ["web.lab/daily-20261205_030000"]
    # Now the records place that VM on b1: its next backups come in without adopt.
    later = synced(store, "b1", [listed(deleted, "daily-20261206_030000")])
    assert later.imported == ["web.lab/daily-20261206_030000"]


def test_sync_imports_at_most_the_limit_from_a_node(tmp_path):
    found, _seen = discovery(tmp_path)
    vm = str(uuidlib.uuid4())
    found.apply({"c1": [report(vm, "web.lab", "zones")]}, {"c1"})
    entries = [listed(vm, "daily-20261205_0%d0000" % n) for n in range(1, 6)]
    summary = synced(found.store, "b1", entries, limit=3)
    assert len(summary.imported) == 3 and len(summary.skipped) == 2
