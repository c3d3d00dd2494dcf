# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Refusals of a module's options before any command runs, each naming the option."""

from __future__ import annotations

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import fail

# Characters that have no business in a host name, a hostname property or a target id.
UNSAFE = "\"'`$;&|<>\\"


def check_names(module, datasets: dict | None = None, snapshots: dict | None = None,
                pools: dict | None = None, uuids: dict | None = None) -> None:
    """Fail the module if a name is not a safe ZFS name (or uuid); None values are not checked."""
    checks = [(datasets, layout.invalid_dataset), (snapshots, layout.invalid_snapshot_name),
              (pools, layout.invalid_pool), (uuids, layout.invalid_uuid)]
    for names, invalid in checks:
        for option, value in (names or {}).items():
            if value is None:
                continue
            problem = invalid(value)
            if problem:
                fail(module, "%s: %s" % (option, problem), option=option)


def check_host(module, option: str, value: str | None) -> None:
    """Refuse a host name that ssh could read as an option."""
    if value and (value.startswith("-") or any(c.isspace() for c in value)):
        fail(module, "%s: '%s' is not a host name" % (option, value), option=option)


def check_path(module, option: str, value: str | None) -> None:
    """Refuse a file path that is not absolute and plain (no '..', no control characters)."""
    if value is None:
        return
    if not value.startswith("/") or ".." in value.split("/") or any(ord(c) < 32 or c in UNSAFE for c in value):
        fail(module, "%s: '%s' is not an absolute path of plain characters" % (option, value), option=option)


def check_label(module, option: str, value: str | None) -> None:
    """Refuse a free-form label (hostname, target id) that holds spaces or shell characters."""
    if value and (len(value) > 255 or any(c.isspace() or c in UNSAFE for c in value)):
        fail(module, "%s: '%s' contains characters not allowed in a name" % (option, value), option=option)
