"""Config files as plain data: read, merge, override by dotted key, and build a spec dataclass from a mapping.

The ground floor every app uses (`lit_align steer`, sweeps, the experiments); LightningCLI parses `fit`'s configs
itself (jsonargparse), through the same YAML loader (config_yaml.py: duplicate keys refused, errors with file and
line).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path


from lit_align.errors import LitAlignError


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: dicts merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_yaml(path: "str | Path") -> dict:
    """A YAML file that must hold a mapping (an empty file: {})."""
    from lit_align.config_yaml import load_yaml_file

    data = load_yaml_file(str(path)) or {}
    if not isinstance(data, dict):
        raise LitAlignError(f"{path}: expected a mapping")
    return data


def set_dotted(cfg: dict, dotted: str, value, option: str | None = None) -> None:
    """cfg["a"]["b"]["c"] = value for "a.b.c", creating the sections on the way; `option` names the setting in the
    error where a section on the way is not a mapping."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise LitAlignError(f"{option or dotted}: '{k}' is not a section")
    node[keys[-1]] = value


def spec_from_dict(cls, values, where: str, nested: dict | None = None):
    """The dataclass `cls` from a mapping, refusing unknown keys with the list of options; `nested` maps a field to
    the dataclass its own mapping builds (e.g. {"lora": LoraSpec})."""
    if not isinstance(values, dict):
        raise LitAlignError(f"{where}: expected a mapping, not {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise LitAlignError(f"{where}: unknown option '{unknown[0]}'; the options are {', '.join(sorted(names))}")
    values = dict(values)
    for name, sub in (nested or {}).items():
        if isinstance(values.get(name), dict):
            values[name] = spec_from_dict(sub, values[name], f"{where}.{name}")
    return cls(**values)
