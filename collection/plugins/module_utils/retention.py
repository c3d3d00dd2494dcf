# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which backups of a disk go and which stay: a pure plan over a listing, decided before anything is deleted."""

from __future__ import annotations

from dataclasses import dataclass, field

KEEP_RETENTION = "within the newest %d of %s"
KEEP_PROTECTED = "listed in protect"
KEEP_BASE = "the newest backup the source also has: the base of the next incremental backup"
KEEP_NEWEST = "the newest backup of the backup dataset (no source given to compare with): maybe the incremental base"


@dataclass
class Plan:
    """The backups to delete (oldest first), those asked for that stay (with why), the names not found."""

    doomed: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    absent: list = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The names of the backups to delete, once each, oldest first."""
        return list(dict.fromkeys(b["name"] for b in self.doomed))


def is_orphan(backup: dict) -> bool:
    """A manifest whose data is gone: listed, deletable by name, but not counted by a retention."""
    return bool(backup.get("problem")) and backup["problem"].startswith("manifest without")


def plan(backups: list[dict], names: list[str] = (), keep: int = 0, definition: str | None = None,
         protected: dict[str, str] | None = None) -> Plan:
    """Delete the backups called `names` and those of `definition` beyond the newest `keep`, except the
    `protected` ones ({name: why}). `backups` is a listing, oldest first."""
    protected = dict(protected or {})
    result = Plan()
    doomed: set[int] = set()
    for name in names:
        named = [i for i, b in enumerate(backups) if b["name"] == name]
        if not named:
            result.absent.append(name)
        doomed.update(named)
    if keep:
        counted = [i for i, b in enumerate(backups) if b["definition"] == definition and not is_orphan(b)]
        doomed.update(counted[:-keep])
        within = KEEP_RETENTION % (keep, definition)
        result.kept += [{"name": backups[i]["name"], "reason": protected.get(backups[i]["name"], within)}
                        for i in counted[-keep:]]
    for i in sorted(doomed):  # the listing's order: oldest first
        name = backups[i]["name"]
        if name not in protected:
            result.doomed.append(backups[i])
        elif not any(k["name"] == name for k in result.kept):
            result.kept.append({"name": name, "reason": protected[name]})
    return result


def emptied_datasets(backups: list[dict], doomed: list[dict]) -> list[str]:
    """The backup datasets whose every snapshot is doomed (they go too)."""
    paths = {b["path"] for b in doomed}
    left = {b["dataset"] for b in backups if b.get("dataset") and b["path"] not in paths}
    return sorted({b["dataset"] for b in doomed if b.get("dataset")} - left)
