"""vmbackup.zfs.prune on real zfs-fuse pools: retention, deletion by name, and the backups it must never delete."""

from __future__ import annotations

import os

from ansible_run import dumps, run_module
from conftest import exists, snapshots, zfs
from test_send import backup, target_of

from vmbackup_lab.lab import Lab, LabVM, ensure_sshd


def prune(lab: Lab, vm: LabVM, check: bool = False, **args) -> dict:
    base = {"zpool": lab.backup_pool, "vm_uuid": vm.uuid, "disk": 0}
    base.update(args)
    return run_module("vmbackup.zfs.prune", base, check=check)


def make_backups(lab: Lab, vm: LabVM, names: list[str], **extra) -> list[dict]:
    """One backup per name (`<definition>-<time>`), each after new data on the disk, the source pruned as the
    backup playbook does."""
    made = []
    for name in names:
        lab.write_data(vm.disk(lab.compute_pool, 0), name + ".bin", 1)
        res = backup(lab, vm, name, prune_source=True, definition=name.split("-", 1)[0], **extra)
        assert not res.failed, dumps(res)
        made.append(res)
    return made


def manifest_of(lab: Lab, vm: LabVM, name: str) -> str:
    return os.path.join(lab.mountpoint(lab.backup_pool), "backups", "manifests", "ds", "%s-disk0" % vm.uuid,
                        name + ".json")


DAILY = ["daily-20261130_0%d0000" % h for h in range(1, 5)]


def test_retention_keeps_exactly_n_and_the_next_backup_is_still_incremental(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    make_backups(lab, vm, DAILY)
    res = prune(lab, vm, source=disk, definition="daily", keep=2)
    assert not res.failed, dumps(res)
    assert res["changed"] and res["destroyed"] == DAILY[:2]
    assert snapshots(target_of(lab, vm)) == DAILY[2:]
    assert [k["name"] for k in res["kept"]] == DAILY[2:]
    assert not any(os.path.exists(manifest_of(lab, vm, n)) for n in DAILY[:2])  # manifests went with them
    assert all(os.path.exists(manifest_of(lab, vm, n)) for n in DAILY[2:])
    assert res["diff"] == {"before": {"backups": DAILY}, "after": {"backups": DAILY[2:]}}, dumps(res)

    nxt = make_backups(lab, vm, ["daily-20261130_050000"])[0]
    assert nxt["incremental"] and nxt["base"] == DAILY[-1], dumps(nxt)

    again = prune(lab, vm, source=disk, definition="daily", keep=2)
    assert again["destroyed"] == [DAILY[2]] and snapshots(target_of(lab, vm)) == DAILY[3:] + ["daily-20261130_050000"]
    same = prune(lab, vm, source=disk, definition="daily", keep=2)  # a second identical run changes nothing
    assert not same.failed and not same["changed"] and same["destroyed"] == [], dumps(same)


def test_retention_counts_only_its_own_definition(lab, vm):
    make_backups(lab, vm, ["daily-20261130_060000", "weekly-20261130_070000", "daily-20261130_080000",
                           "weekly-20261130_090000", "daily-20261130_100000"])
    target = target_of(lab, vm)
    res = prune(lab, vm, source=vm.disk(lab.compute_pool, 0), definition="weekly", keep=1)
    assert not res.failed and res["destroyed"] == ["weekly-20261130_070000"], dumps(res)
    assert snapshots(target) == ["daily-20261130_060000", "daily-20261130_080000", "weekly-20261130_090000",
                                 "daily-20261130_100000"]


def test_the_newest_snapshot_the_source_also_has_is_never_deleted(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    names = ["daily-20261130_110000", "daily-20261130_120000", "daily-20261130_130000"]
    for name in names:
        assert not backup(lab, vm, name).failed  # without prune_source: the source keeps all three
    zfs("destroy", disk + "@" + names[2])  # the newest is gone from the source: the base is now the middle one
    res = prune(lab, vm, source=disk, definition="daily", keep=1)
    assert not res.failed, dumps(res)
    assert res["destroyed"] == [names[0]]
    assert snapshots(target_of(lab, vm)) == names[1:]
    reasons = {k["name"]: k["reason"] for k in res["kept"]}
    assert "base of the next incremental" in reasons[names[1]] and "within the newest 1" in reasons[names[2]]

    by_name = prune(lab, vm, source=disk, backups=[names[1]])  # asked by name: still protected
    assert not by_name.failed and by_name["destroyed"] == [] and not by_name["changed"], dumps(by_name)
    assert by_name["kept"][0]["name"] == names[1] and snapshots(target_of(lab, vm)) == names[1:]


def test_without_a_source_the_newest_is_protected_and_with_the_source_gone_nothing_is(lab, vm):
    make_backups(lab, vm, ["daily-20261130_140000", "daily-20261130_150000"])
    res = prune(lab, vm, backups=["daily-20261130_140000", "daily-20261130_150000"])
    assert not res.failed and res["destroyed"] == ["daily-20261130_140000"], dumps(res)
    assert "no source given" in res["kept"][0]["reason"]

    gone = "%s/%s-disk0" % (lab.compute_pool, "00000000-0000-4000-8000-000000000000")
    res = prune(lab, vm, source=gone, backups=["daily-20261130_150000"])
    assert not res.failed and res["destroyed"] == ["daily-20261130_150000"], dumps(res)
    assert res["destroyed_datasets"] == [target_of(lab, vm)]  # the last snapshot went: the dataset too
    assert not exists(target_of(lab, vm))
    assert not os.path.exists(manifest_of(lab, vm, "daily-20261130_150000"))


def test_protect_and_absent_names(lab, vm):
    names = ["daily-20261130_160000", "daily-20261130_170000", "daily-20261130_180000"]
    make_backups(lab, vm, names)
    res = prune(lab, vm, source=vm.disk(lab.compute_pool, 0), backups=names[:2] + ["daily-20000101_000000"],
                protect=[names[0]])
    assert not res.failed, dumps(res)
    assert res["destroyed"] == [names[1]] and res["absent"] == ["daily-20000101_000000"]
    assert res["kept"] == [{"name": names[0], "reason": "listed in protect"}]
    assert snapshots(target_of(lab, vm)) == [names[0], names[2]]


def test_check_mode_destroys_nothing_but_reports_the_same(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    make_backups(lab, vm, DAILY)
    checked = prune(lab, vm, check=True, source=disk, definition="daily", keep=1)
    assert not checked.failed and checked["changed"] and checked["destroyed"] == DAILY[:3], dumps(checked)
    assert checked["removed"] == []
    assert snapshots(target_of(lab, vm)) == DAILY
    assert all(os.path.exists(manifest_of(lab, vm, n)) for n in DAILY)
    real = prune(lab, vm, source=disk, definition="daily", keep=1)
    assert real["destroyed"] == checked["destroyed"] and real["kept"] == checked["kept"]
    assert real["diff"] == checked["diff"] == {"before": {"backups": DAILY}, "after": {"backups": DAILY[3:]}}
    assert snapshots(target_of(lab, vm)) == DAILY[3:]


def test_file_backups_go_with_their_manifests(lab, vm):
    names = ["weekly-20261130_190000", "weekly-20261130_200000", "weekly-20261130_210000"]
    made = make_backups(lab, vm, names, type="file", compression="gzip")
    res = prune(lab, vm, type="file", definition="weekly", keep=1)
    assert not res.failed and res["destroyed"] == names[:2], dumps(res)
    for old in made[:2]:
        assert not os.path.exists(old["file_path"]) and not os.path.exists(old["file_path"] + ".json")
    assert os.path.exists(made[2]["file_path"]) and os.path.exists(made[2]["file_path"] + ".json")
    assert sorted(res["removed"]) == sorted([m["file_path"] for m in made[:2]] +
                                            [m["file_path"] + ".json" for m in made[:2]])

    last = prune(lab, vm, type="2", backups=[names[2]])  # a file is the base of nothing: no protection
    assert not last.failed and last["destroyed"] == [names[2]], dumps(last)
    assert not os.path.exists(os.path.dirname(made[2]["file_path"]))  # the empty folder went too


def test_an_unreachable_compute_node_deletes_nothing(lab, vm):
    make_backups(lab, vm, ["daily-20261130_220000", "daily-20261130_230000"])
    args = ensure_sshd("/var/tmp/vmbackup-ssh").module_args("source")
    args["source_port"] = 1  # nothing listens there: the base cannot be known
    res = prune(lab, vm, source=vm.disk(lab.compute_pool, 0), definition="daily", keep=1, **args)
    assert res.failed, dumps(res)
    assert snapshots(target_of(lab, vm)) == ["daily-20261130_220000", "daily-20261130_230000"]


def test_bad_input_is_refused_before_any_command_runs(lab, vm):
    for args, option in [({"backups": ["../../etc/passwd"]}, "backups[0]"),
                         ({"backups": ["a"], "zpool": "-o"}, "zpool"),
                         ({"backups": ["a"], "source": "zones/;rm"}, "source"),
                         ({"keep": 2, "definition": "x/y"}, "definition")]:
        res = prune(lab, vm, **args)
        assert res.failed and res["msg"].startswith(option + ":"), dumps(res)
    res = prune(lab, vm, keep=2)
    assert res.failed and "definition" in res["msg"], dumps(res)
