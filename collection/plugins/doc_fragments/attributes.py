# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The attributes every vmbackup module documents: check mode, diff mode, platform."""

from __future__ import annotations


class ModuleDocFragment:
    # Modules that change a node: check mode asks the node and changes nothing; the diff is before/after.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
"""

    # Modules that only read: the same queries run in check mode, and there is nothing to diff.
    INFO_MODULE = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module only reads; check mode runs the same queries.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: N/A
    details: The module changes nothing.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
"""

    # The failure keys every module returns, in one shape.
    FAILURE = r"""
options: {}
notes:
  - On failure every module of vmbackup.zfs returns C(msg), C(cmd) (the command that failed, or the stream
    pipeline as a shell line), C(rc), C(stderr), C(stages) (each stage of the stream with its exit code and
    stderr, when the stream failed) and C(cleanup) (what was done to undo the run); keys that do not apply
    are null or empty.
"""

    # A verify drill: it makes a scratch dataset and destroys it; check mode only plans, nothing is left changed.
    DRILL = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Check mode finds the backup and says what the drill would run; it reads no data, makes no scratch.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: N/A
    details: A drill leaves nothing changed; its scratch dataset is destroyed.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
"""
