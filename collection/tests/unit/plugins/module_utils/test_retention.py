# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Retention planning: which backups of a disk go, which stay and why, before anything is deleted."""

from __future__ import annotations

from ansible_collections.vmbackup.zfs.plugins.module_utils import retention


def backup(name: str, definition: str = "daily", dataset: str | None = "bkp/backups/ds/u-disk0",
           problem: str | None = None) -> dict:
    return {"name": name, "definition": definition, "dataset": dataset,
            "path": "%s@%s" % (dataset, name) if dataset else "/file/%s" % name, "problem": problem}


DAILY = [backup("daily-2026110%d_040000" % day) for day in range(1, 6)]


def test_keep_deletes_the_oldest_beyond_the_newest_n():
    plan = retention.plan(DAILY, keep=2, definition="daily")
    assert plan.names == [b["name"] for b in DAILY[:3]]
    assert [k["name"] for k in plan.kept] == [b["name"] for b in DAILY[3:]]
    assert all(k["reason"] == "within the newest 2 of daily" for k in plan.kept)


def test_keep_counts_only_its_own_definition():
    weekly = backup("weekly-20261101_040000", definition="weekly")
    plan = retention.plan([weekly] + DAILY, keep=4, definition="daily")
    assert plan.names == [DAILY[0]["name"]]


def test_protected_backups_stay_with_their_reason():
    base = DAILY[1]["name"]
    plan = retention.plan(DAILY, keep=2, definition="daily", protected={base: retention.KEEP_BASE})
    assert base not in plan.names
    assert {"name": base, "reason": retention.KEEP_BASE} in plan.kept
    assert plan.names == [DAILY[0]["name"], DAILY[2]["name"]]


def test_named_backups_go_and_missing_names_are_reported_absent():
    plan = retention.plan(DAILY, names=[DAILY[4]["name"], "daily-20261001_040000"])
    assert plan.names == [DAILY[4]["name"]] and plan.absent == ["daily-20261001_040000"]
    assert plan.kept == []


def test_keep_zero_keeps_all():
    assert retention.plan(DAILY, keep=0, definition="daily").doomed == []


def test_orphan_manifests_are_not_counted_by_a_retention_but_go_by_name():
    orphan = backup("daily-20261031_040000", dataset=None, problem="manifest without snapshot: gone")
    listing = [orphan] + DAILY
    assert orphan["name"] not in retention.plan(listing, keep=1, definition="daily").names
    assert retention.plan(listing, names=[orphan["name"]]).names == [orphan["name"]]


def test_a_backup_dataset_goes_when_its_last_snapshot_does():
    aside = [backup("daily-2026102%d_040000" % day, dataset="bkp/backups/ds/u-disk0-aside-x") for day in (1, 2)]
    listing = aside + DAILY
    plan = retention.plan(listing, names=[b["name"] for b in aside])
    assert retention.emptied_datasets(listing, plan.doomed) == ["bkp/backups/ds/u-disk0-aside-x"]
    plan = retention.plan(listing, names=[aside[0]["name"]])
    assert retention.emptied_datasets(listing, plan.doomed) == []
