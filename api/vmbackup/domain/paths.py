"""Where the project's parts are on disk, for code that runs from a checkout or an installed package."""

from __future__ import annotations

import os

# This file is api/vmbackup/domain/paths.py: the project is three folders up from its own.
_HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.environ.get("VMBACKUP_HOME") or os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
PLAYBOOKS = os.path.join(PROJECT, "playbooks")
INVENTORY = os.path.join(PROJECT, "inventory")
# ansible_collections/vmbackup/zfs links to collection/, so the project root is a collections path.
COLLECTIONS_PATH = PROJECT
