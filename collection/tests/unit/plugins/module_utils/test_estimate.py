# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The size and plan of a stream, read from what `zfs send -nP` prints on OpenZFS 2.3 (captured) and illumos
(from its libzfs): fixtures/send-estimates/README.md says where each comes from."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.zfs.plugins.module_utils.estimate import parse_send_plan

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "send-estimates")
DISK = "zones/e1e1e1e1-0000-4000-8000-000000000001-disk0"


def plan(name: str) -> dict:
    with open(os.path.join(HERE, name + ".txt")) as handle:
        return parse_send_plan(handle.read())


def test_full_and_incremental_streams_of_openzfs():
    full = plan("openzfs-2.3.2-full")
    assert full["size"] == 10687496 and full["snapshots"] == [("full", None, DISK + "@s2", 10687496)]
    incremental = plan("openzfs-2.3.2-incremental")
    assert incremental["size"] == 2171032
    assert incremental["snapshots"] == [("incremental", DISK + "@s1", DISK + "@s2", 2171032)]
    assert plan("openzfs-2.3.2-bookmark")["snapshots"][0][1] == DISK + "#s1"


def test_a_resume_token_says_what_it_carries_on_and_what_is_left():
    resume = plan("openzfs-2.3.2-resume")
    assert resume["size"] == 7696948  # what is left to send, not the whole stream
    assert resume["toguid"] == str(0x246AFBCBCCDC17F8) and resume["toname"] == DISK + "@s2"
    assert resume["bytes"] == 0x2DA1D4 and "fromguid" not in resume  # a full stream, cut


def test_illumos_lines_with_and_without_the_total():
    assert plan("illumos-full")["size"] == 52428800
    older = plan("illumos-2015-incremental-no-total")
    assert older["size"] == 1048576 and older["snapshots"][0][0] == "incremental"


def test_nothing_to_read_gives_no_size():
    assert parse_send_plan("") == {"snapshots": []}
    assert "size" not in parse_send_plan("cannot open 'zones/x@y': dataset does not exist\n")
    zero = parse_send_plan("full\tzones/d@s\n")  # a zero size that an older illumos leaves out
    assert zero["snapshots"] == [("full", None, "zones/d@s", 0)] and zero["size"] is None
