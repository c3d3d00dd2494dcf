"""Facts the API shares with the collection, each with one home: imported from the collection's own
files (the project root is an Ansible collections path: ansible_collections/vmbackup/zfs -> collection/),
so that the API, the modules and the playbooks cannot drift apart.
"""

from __future__ import annotations

import sys

from vmbackup.domain import paths

if paths.COLLECTIONS_PATH not in sys.path:
    sys.path.append(paths.COLLECTIONS_PATH)

from ansible_collections.vmbackup.zfs.plugins.filter.report import batch_key  # noqa: E402
from ansible_collections.vmbackup.zfs.plugins.module_utils import layout  # noqa: E402

# Backup status codes (API.md section 3).
OK, PENDING, RESTORE, LOST = 1, 2, 3, 4
STATUSES = {OK: "OK", PENDING: "PENDING", RESTORE: "RESTORE", LOST: "LOST"}
# Backup types: the API's numbers and the collection's words.
TYPE_DATASET, TYPE_FILE = 1, 2
TYPES = {TYPE_DATASET: "dataset", TYPE_FILE: "file"}
TYPE_OF_WORD = {word: number for number, word in TYPES.items()}
BACKUP_TIME_FORMAT = layout.BACKUP_TIME_FORMAT
# Compressions of file backups: the API's 0-3 (none, gzip, bzip2, xz) and, as an extension, the names
# the collection knows (zstd, lz4, ...). A definition stores what the client gave.
API_COMPRESSIONS = sorted(layout.API_COMPRESSION)
COMPRESSION_NAMES = sorted(n for n in layout.COMPRESSION if n not in layout.API_COMPRESSION.values())


def compression(value) -> int | str:
    """A definition's compression: 0-3 as an integer, or a name such as zstd; ValueError otherwise."""
    text = str(value).strip().lower() if not isinstance(value, bool) else ""
    if text in API_COMPRESSIONS:
        return int(text)
    if text in COMPRESSION_NAMES:
        return text
    raise ValueError(value)


__all__ = ["batch_key", "layout", "OK", "PENDING", "RESTORE", "LOST", "TYPE_DATASET", "TYPE_FILE", "TYPES",
           "BACKUP_TIME_FORMAT", "compression"]
