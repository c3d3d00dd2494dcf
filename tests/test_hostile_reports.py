"""What a compromised node reports never takes another node's VM: a uuid two nodes report in one discovery is
refused for both (records kept, a log line, a vm_conflict event), and a uuid moves only once its node answered
without it. Discovery's apply step on a real store, with the reports a node would send (the playbooks that
gather them run in tests/test_api_discovery.py)."""

from __future__ import annotations

import logging
import uuid as uuidlib

from vmbackup.discovery import Discovery
from vmbackup.events import Events
from vmbackup.store import Store


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

    from vmbackup.lab import LabVM
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
