# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Names are checked whole: a trailing newline, a leading dash or shell syntax is refused by every checker."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.checks import check_host, check_label, check_names

UUID = "9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a"


class Refused(Exception):
    pass


class FakeModule:
    """Just enough of AnsibleModule: fail_json raises with what it was given."""

    def fail_json(self, **kwargs):
        raise Refused(kwargs)


BAD_DATASETS = ["zones\n", "zones/a\n", "-zones", "zones/../x", "zones/a b", "zones/a;rm", "", "zones//a", "zones/a@b"]
BAD_SNAPSHOTS = ["daily\n", "daily-20261128_040000\n", "-daily", "a..b", "a/b", "a@b", "a b", ""]
BAD_BACKUP_NAMES = ["daily-20261128_040000\n", "daily\n", "daily-2026", "daily-20261128_040000x"]


@pytest.mark.parametrize("checker, good, bad", [
    (layout.invalid_dataset, "zones/%s-disk0" % UUID, BAD_DATASETS),
    (layout.invalid_snapshot_name, "daily-20261128_040000", BAD_SNAPSHOTS),
    (layout.invalid_pool, "zones", ["pool\n", "zones\n", "1zones", "-zones", "zones/a", ""]),
    (layout.invalid_uuid, UUID, [UUID + "\n", UUID[:-1], UUID + "0", "x" * 36, ""]),
    (layout.invalid_definition, "daily", ["daily\n", "toolongname", "-daily", "da ily", ""]),
    (layout.invalid_backup_name, "daily-20261128_040000", BAD_BACKUP_NAMES),
])
def test_each_checker_takes_a_good_name_and_refuses_bad_ones(checker, good, bad):
    assert checker(good) is None
    for name in bad:
        assert checker(name), "accepted %r" % name


@pytest.mark.parametrize("checker", [layout.invalid_dataset, layout.invalid_snapshot_name, layout.invalid_pool,
                                     layout.invalid_uuid, layout.invalid_definition, layout.invalid_backup_name])
def test_no_checker_accepts_a_non_string(checker):
    assert checker(None) and checker(42) and checker(["zones"])


def test_disk_datasets_are_matched_whole():
    assert layout.disk_of("zones/%s-disk1" % UUID.upper()) == (UUID, 1)
    assert layout.disk_of("zones/%s" % UUID) == (UUID, 0)
    assert layout.is_disk_dataset("zones/%s-disk0" % UUID)
    for name in ("zones/%s-disk0\n" % UUID, "zones/%s\n" % UUID, "zones/%s-disk0/child" % UUID, "zones/notauuid"):
        assert not layout.is_disk_dataset(name)
        with pytest.raises(ValueError):
            layout.disk_of(name)


def test_backup_dataset_leaves_and_files_are_matched_whole():
    assert layout.backup_dataset_leaf("%s-disk2" % UUID) == (UUID, 2, False)
    assert layout.backup_dataset_leaf("%s-disk0-aside-20261128T040000" % UUID) == (UUID, 0, True)
    assert layout.backup_dataset_leaf("%s-disk0\n" % UUID) is None
    assert layout.backup_of_file("daily-20261128_040000-full.zfs.gz") == "daily-20261128_040000"
    assert layout.backup_of_file("daily-20261128_040000-full.zfs.gz\n") is None
    assert layout.backup_of_file("daily-20261128_040000-full.zfs.rar") is None


def test_check_names_fails_the_module_naming_the_option():
    check_names(FakeModule(), datasets={"source": "zones/a"}, snapshots={"snapshot": None}, pools={"zpool": "zones"},
                uuids={"vm_uuid": UUID})
    with pytest.raises(Refused) as refused:
        check_names(FakeModule(), snapshots={"snapshot": "daily\n"})
    failure = refused.value.args[0]
    assert failure["msg"].startswith("snapshot: ") and failure["option"] == "snapshot"
    assert failure["cleanup"] == [] and failure["cmd"] is None and failure["stages"] == []
    with pytest.raises(Refused):
        check_names(FakeModule(), uuids={"vm_uuid": UUID + "\n"})
    with pytest.raises(Refused):
        check_names(FakeModule(), pools={"zpool": "pool\n"})


def test_hosts_and_labels_that_ssh_or_a_shell_could_misread_are_refused():
    check_host(FakeModule(), "source_host", "node01.example.com")
    check_label(FakeModule(), "hostname", "web01.example.com")
    for host in ("-oProxyCommand=x", "node01\n", "node 01"):
        with pytest.raises(Refused):
            check_host(FakeModule(), "source_host", host)
    for label in ("web01;rm", "web01\n", "a" * 256, "$(id)"):
        with pytest.raises(Refused):
            check_label(FakeModule(), "hostname", label)


def test_every_pattern_ends_in_backslash_z_so_even_match_refuses_a_trailing_newline():
    patterns = [value for name, value in vars(layout).items() if name.endswith("_RE")]
    assert len(patterns) >= 9
    for pattern in patterns:
        assert pattern.pattern.endswith("\\Z") and "$" not in pattern.pattern, pattern.pattern
    assert layout.UUID_RE.match(UUID) and not layout.UUID_RE.match(UUID + "\n")
