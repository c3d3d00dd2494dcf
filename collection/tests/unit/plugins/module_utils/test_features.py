# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Each feature flag is read from what the node's own `zfs` prints as its usage. The fixtures are that output,
captured whole: OpenZFS 2.3.2 (the OpenZFS lab's guests) and zfs-fuse 0.7 (the broad suite's nodes)."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Features, usage_flags

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "zfs-usage")


def usage(name: str) -> str:
    with open(os.path.join(HERE, name + ".txt")) as handle:
        return handle.read()


def test_openzfs_2_3_has_every_feature_vmbackup_uses():
    features = Features.from_usage(usage("openzfs-2.3.2"), "openzfs")
    assert features.names() == list(Features.FLAGS)


def test_zfs_fuse_has_none_of_them():
    """zfs-fuse 0.7 has `zfs hold` and `zfs release` but its `zfs holds` takes no -H (and cannot run without
    pyzfs): without a listing vmbackup could not tell its own holds, so it holds nothing there."""
    text = usage("zfs-fuse-0.7")
    assert {"hold", "release", "holds"} <= set(usage_flags(text))
    assert Features.from_usage(text, "zfs-fuse").names() == []


def test_each_flag_follows_its_own_option():
    text = usage("openzfs-2.3.2")
    assert usage_flags(text)["send"] >= set("DLPbcehnpsVvwt")  # -t from `send [-nVvPe] -t <token>`
    older = text.replace("send [-DLPbcehnpsVvw]", "send [-DLPbcehnpsVv]").replace("[-DnVvPLecw]", "[-DnVvPLec]")
    assert Features.from_usage(older, "openzfs").send_raw is False  # no -w: no raw sends
    without_abort = text.replace("receive -A <filesystem|volume>", "")
    assert Features.from_usage(without_abort, "openzfs").resume is False  # a token it could not abort
    no_listing = text.replace("holds [-rHp]", "holds [-r]")
    assert Features.from_usage(no_listing, "openzfs").holds is False
    assert Features.from_usage(text.replace("\tbookmark ", "\tbookmarks "), "openzfs").bookmarks is False
    assert Features.from_usage(text.replace("list [-Hp]", "list [-H]"), "openzfs").list_parsable is False
