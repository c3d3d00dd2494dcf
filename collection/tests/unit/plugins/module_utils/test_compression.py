# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The compression table: API codes and names, the file name each gives, and how a restore reads it back."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout, stream


@pytest.mark.parametrize("value, name", [(0, "none"), ("1", "gzip"), (2, "bzip2"), ("3", "xz"), ("zstd", "zstd"),
                                         (" LZ4 ", "lz4"), ("none", "none")])
def test_api_codes_and_names_map_to_one_compression(value, name):
    assert layout.compression_name(value) == name


@pytest.mark.parametrize("value", ["4", "rar", "", "gzip\n1"])
def test_unknown_compressions_are_refused_with_the_choices(value):
    with pytest.raises(ValueError, match="compression must be one of"):
        layout.compression_name(value)


def test_every_compression_names_its_file_and_is_recognised_from_it():
    extensions = [entry["ext"] for entry in layout.COMPRESSION.values()]
    assert len(set(extensions)) == len(extensions)  # a file's extension says which one it is
    for name in layout.COMPRESSION:
        filename = layout.file_backup_name("daily-20261128_040000", name)
        assert layout.compression_of_file("/backups/file/x/disk0/" + filename) == name
        assert layout.backup_of_file(filename) == "daily-20261128_040000"


def test_each_compressor_has_its_reverse():
    for name, entry in layout.COMPRESSION.items():
        assert bool(entry["compress"]) == bool(entry["decompress"]), name
        if entry["compress"]:
            assert stream.compress_stage(name)[0] in (entry["compress"][0], entry.get("parallel", [None])[0])
            assert stream.decompress_stage(name) == entry["decompress"]
        else:
            assert stream.compress_stage(name) is None and stream.decompress_stage(name) is None


def test_a_file_that_is_not_a_backup_is_refused():
    with pytest.raises(ValueError):
        layout.compression_of_file("daily-20261128_040000-full.tar")
