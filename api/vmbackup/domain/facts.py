"""Facts the API shares with the collection, each with one home: imported from the collection's own
files (the project root is an Ansible collections path: ansible_collections/vmbackup/zfs -> collection/),
so that the API, the modules and the playbooks cannot drift apart.
"""

from __future__ import annotations

import enum
import sys

from vmbackup.domain import paths

if paths.COLLECTIONS_PATH not in sys.path:
    sys.path.append(paths.COLLECTIONS_PATH)

from ansible_collections.vmbackup.zfs.plugins.filter.report import batch_key  # noqa: E402
from ansible_collections.vmbackup.zfs.plugins.module_utils import layout  # noqa: E402


class BackupStatus(enum.IntEnum):
    """A backup record's status: its number in the API (API.md section 3), its name in listings and metrics."""

    OK = 1
    PENDING = 2
    RESTORE = 3
    LOST = 4


class TaskStatus(str, enum.Enum):
    """A task's status, as the API's envelopes, task records and task log say it."""

    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"

    def __str__(self) -> str:
        return self.value


STATUSES = {status.value: status.name for status in BackupStatus}
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


__all__ = ["batch_key", "layout", "BackupStatus", "TaskStatus", "STATUSES", "TYPE_DATASET", "TYPE_FILE", "TYPES",
           "BACKUP_TIME_FORMAT", "compression"]
