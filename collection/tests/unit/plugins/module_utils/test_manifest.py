# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Manifests go to disk and come back the same; a crash leaves no half file, and a killed run's part file goes."""

from __future__ import annotations

import json
import os

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout, manifest


def test_a_manifest_round_trips(tmp_path):
    record = {"version": 1, "backup": "daily-20261128_040000", "vm_uuid": "9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a",
              "disk_id": 1, "size": 41843149, "checksum": None, "source": {"guid": "1128216759885809003"}}
    path = str(tmp_path / "ds" / "leaf" / "daily-20261128_040000.json")
    manifest.write_json_atomic(path, record)
    assert manifest.read_manifest(path) == record
    assert os.listdir(os.path.dirname(path)) == ["daily-20261128_040000.json"]  # no part file left
    with open(path) as handle:
        assert json.load(handle) == record


def test_an_unreadable_manifest_reads_as_none(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{half")
    assert manifest.read_manifest(str(broken)) is None
    assert manifest.read_manifest(str(tmp_path / "missing.json")) is None


def test_part_files_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / ("backup.zfs%s%d" % (manifest.PART_MARK, 2 ** 22 + 12345))  # above any pid_max default
    live = tmp_path / ("backup.zfs%s%d" % (manifest.PART_MARK, os.getpid()))
    dead.write_text("x")
    live.write_text("x")
    assert manifest.remove_stale_parts(str(tmp_path)) == [str(dead)]
    assert live.exists() and not dead.exists()


def test_backup_properties_are_vmbackup_user_properties():
    props = manifest.backup_properties("daily-20261128_040000", "daily", "9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a",
                                       None, 1, "2026-11-28T04:00:00Z", "dataset")
    assert all(key.startswith(layout.PROP_PREFIX) for key in props)
    assert props[layout.PROP_DISK_ID] == "1" and layout.PROP_HOSTNAME not in props
    assert set(props) <= set(manifest.BACKUP_PROPERTIES)
