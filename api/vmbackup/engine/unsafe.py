"""Extra vars as data: every string handed to a playbook is written with YAML's `!unsafe` tag.

ansible-core templates every extra var it is not told is unsafe, so a VM hostname such as
`{{ lookup('pipe', 'id') }}` reported by a node would run on the controller. The runner passes
`env/extravars` to ansible-playbook as `-e @file`, whose YAML loader honours `!unsafe` at any depth:
the value stays a plain string for every task and is never rendered.
"""

from __future__ import annotations

import re

import yaml

# Keys are ours (playbook variable names and the fields of batch items), never a client's.
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _UnsafeDumper(yaml.SafeDumper):
    """SafeDumper that tags every string value `!unsafe` and keeps mapping keys plain."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", value, style="'")


def _mapping(dumper: yaml.SafeDumper, value: dict) -> yaml.MappingNode:
    pairs = []
    for key, item in value.items():
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise ValueError("extra var key %r is not a variable name" % (key,))
        pairs.append((yaml.ScalarNode("tag:yaml.org,2002:str", key), dumper.represent_data(item)))
    return yaml.MappingNode("tag:yaml.org,2002:map", pairs)


_UnsafeDumper.add_representer(str, _string)
_UnsafeDumper.add_representer(dict, _mapping)


def dump(extravars: dict) -> str:
    """YAML for `env/extravars`: the same values, every string (nested ones too) marked unsafe."""
    return yaml.dump(extravars, Dumper=_UnsafeDumper, default_flow_style=False, allow_unicode=True,
                     sort_keys=False)
