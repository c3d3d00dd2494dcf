# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Options shared by the modules that reach a second node by ssh."""

from __future__ import annotations


class ModuleDocFragment:
    # The compute node a backup node pulls from (send) or pushes to (restore).
    SOURCE = r"""
options:
  source_host:
    description:
      - Host name or address of the compute node that holds the VM disk, reached by ssh from the node
        running this module. Omit it when the disk is on this node (no ssh hop).
    type: str
  source_user:
    description: User for the ssh connection; it needs to run C(zfs) on the compute node.
    type: str
    default: root
  source_port:
    description: ssh port of the compute node.
    type: int
    default: 22
  source_key:
    description: Private key file for the ssh connection (C(ssh -i)).
    type: path
  source_ssh_options:
    description: Extra C(ssh -o) options, for example C(StrictHostKeyChecking=accept-new).
    type: list
    elements: str
    default: []
"""

    TARGET = r"""
options:
  target_host:
    description:
      - Host name or address of the compute node that holds the target VM disk, reached by ssh from
        the node running this module. Omit it when the disk is on this node.
    type: str
  target_user:
    description: User for the ssh connection; it needs to run C(zfs) on the compute node.
    type: str
    default: root
  target_port:
    description: ssh port of the compute node.
    type: int
    default: 22
  target_key:
    description: Private key file for the ssh connection (C(ssh -i)).
    type: path
  target_ssh_options:
    description: Extra C(ssh -o) options.
    type: list
    elements: str
    default: []
"""
