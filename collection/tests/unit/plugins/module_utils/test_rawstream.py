# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The raw stream digest: the same for one snapshot sent from two pools, another for any changed byte of data.

The fixtures are real `zfs send -w` streams (gzipped) of one snapshot of an encrypted 4 MiB zvol holding 64 KiB of
random data, captured on the OpenZFS lab: once from the compute node (`zones/e2e2...-disk0@s1`) and once from the
backup node that received it raw (`zones/backups/ds/fx-disk0@s1`). Their bytes differ (the BEGIN record names the
dataset, and every record's running checksum follows from it)."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys

import pytest

from ansible_collections.vmbackup.zfs.plugins.module_utils import rawstream

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "raw-streams")


def captured(name: str) -> bytes:
    with gzip.open(os.path.join(HERE, "openzfs-2.3.2-%s.zs.gz" % name)) as handle:
        return handle.read()


def digest(data: bytes) -> str:
    return rawstream.digest(io.BytesIO(data))


def records(data: bytes):
    """(offset, type, payload length) of each record."""
    found, at = [], 0
    while at < len(data):
        header = data[at:at + rawstream.HEADER]
        kind = struct.unpack_from("<I", header)[0]
        length = rawstream.payload_length(kind, header, "<")
        found.append((at, kind, length))
        at += rawstream.HEADER + length
    return found


def test_one_snapshot_from_two_pools_gives_one_digest_though_the_bytes_differ():
    source, copy = captured("source"), captured("backup-node")
    assert source != copy and len(source) == len(copy)
    assert digest(source) == digest(copy)


def test_the_stream_is_walked_record_by_record_to_its_end():
    found = records(captured("source"))
    kinds = [kind for dummy, kind, dummy2 in found]
    assert kinds[0] == rawstream.BEGIN and kinds[-1] == rawstream.END and kinds.count(rawstream.END) == 1
    writes = [length for dummy, kind, length in found if kind == rawstream.WRITE]
    assert sum(writes) >= 64 * 1024  # the random data, encrypted, every byte in a WRITE payload


def test_a_changed_byte_of_data_a_lost_record_or_a_cut_stream_is_seen():
    source = captured("source")
    whole = digest(source)
    at, dummy, length = next(r for r in records(source) if r[1] == rawstream.WRITE and r[2] >= 4096)
    flipped = bytearray(source)
    flipped[at + rawstream.HEADER + length // 2] ^= 1
    assert digest(bytes(flipped)) != whole
    header = bytearray(source)
    header[at + 8 + 16] ^= 1  # the WRITE's offset: the same bytes in another place
    assert digest(bytes(header)) != whole
    last = records(source)[-2]  # the record before END, taken out
    assert digest(source[:last[0]] + source[last[0] + rawstream.HEADER + last[2]:]) != whole
    with pytest.raises(rawstream.StreamError):
        digest(source[:len(source) // 2])
    with pytest.raises(rawstream.StreamError):
        digest(b"not a stream" * 100)


def test_the_pipeline_stage_prints_the_digest_of_its_input():
    source = captured("source")
    done = subprocess.run(rawstream.stage(), input=source, capture_output=True, check=True)
    assert done.stdout.decode().split() == [digest(source)]
    cut = subprocess.run(rawstream.stage(), input=source[:1000], capture_output=True, check=False)
    assert cut.returncode == 1 and b"ends inside a record" in cut.stderr
    assert rawstream.stage()[0] == sys.executable
