# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What `zfs send -nP` says a stream will be: its size (the progress bar's 100 %), and for a resume token
(`zfs send -nvPt <token>`) which snapshot it carries on from where.

OpenZFS 2.x and illumos print the same parsable lines: one per snapshot, `full\t<snapshot>\t<bytes>` or
`incremental\t<from>\t<to>\t<bytes>` (from: a snapshot or a `#bookmark`), then `size\t<bytes>`, the total.
illumos before 2016 printed no total for a plain send: the snapshots' lines are summed then. A resume token's
plan starts with the token's contents as an nvlist (`toguid = 0x...`, `fromguid = 0x...`, `toname = ...`,
`bytes = 0x...` already received).
"""

from __future__ import annotations

TOKEN_KEYS = ("toguid", "fromguid", "toname", "bytes")


def parse_send_plan(text: str) -> dict:
    """{size, snapshots: [(kind, from, to, bytes)], toguid, fromguid, toname, bytes}: guids as decimal strings
    (as `zfs get guid` gives them), sizes as ints; what the text does not say is left out."""
    plan: dict = {"snapshots": []}
    for line in text.splitlines():
        fields = line.rstrip("\n").split("\t")
        key, sep, value = line.strip().partition(" = ")
        if sep and key in TOKEN_KEYS:
            plan[key] = _number(value.strip()) if key != "toname" else value.strip()
        elif fields[0] == "size" and len(fields) == 2 and fields[1].strip().isdigit():
            plan["size"] = int(fields[1])
        elif fields[0] in ("full", "incremental"):
            with_size = len(fields) == (3 if fields[0] == "full" else 4) and fields[-1].strip().isdigit()
            names = fields[1:-1] if with_size else fields[1:]  # an older illumos leaves a zero size out
            start = names[0] if fields[0] == "incremental" else None
            plan["snapshots"].append((fields[0], start, names[-1], int(fields[-1]) if with_size else 0))
    if "size" not in plan and plan["snapshots"]:
        plan["size"] = sum(s[3] for s in plan["snapshots"]) or None
    for key in ("toguid", "fromguid", "bytes"):
        if key in plan and plan[key] is None:
            del plan[key]
    if plan.get("bytes") is not None:
        plan["bytes"] = int(plan["bytes"])
    return plan


def _number(value: str) -> str | None:
    """A token's number (hex 0x... or decimal) as a decimal string; None when it is not one."""
    try:
        return str(int(value, 0))
    except ValueError:
        return None
