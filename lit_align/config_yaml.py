"""How config files are read: jsonargparse's YAML loader, made strict about keys and plain about errors.

A key given twice in one mapping (`class_path` twice under `model:`) is refused: YAML keeps the later one
silently, and the error that follows then blames something else (the data). A YAML syntax error or a duplicate
key in a config file is reported with the file's name and line, not as `"<unicode string>", line 3`.
`install()` (called by cli/__init__.py at import) puts both in place.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.constructor import ConstructorError

MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *base` takes keys from an anchor, and may override them: allowed


class DuplicateKeyError(ConstructorError):
    """A key given twice in one YAML mapping."""

    def __init__(self, key, first: yaml.Mark, again: yaml.Mark):
        super().__init__(problem=f"the key {key!r} is given twice in one mapping (first at line {first.line + 1}); "
                                 "YAML would silently keep the later one: remove one of them", problem_mark=again)


class ConfigFileError(yaml.YAMLError):
    """A YAML error in a config file, in one sentence naming the file and the line. (A YAMLError still, so that
    jsonargparse reports it as it reports any config it cannot read.)"""


def unique_key_loader(base: type) -> type:
    """A subclass of the YAML loader class `base` that refuses a key given twice in one mapping."""

    class UniqueKeyLoader(base):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first_seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == MERGE_TAG:
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in first_seen:
                            raise DuplicateKeyError(key, first_seen[key], key_node.start_mark)
                    except TypeError:  # an unhashable key: the base constructor says so
                        continue
                    first_seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    UniqueKeyLoader.__name__ = f"UniqueKey{base.__name__}"
    UniqueKeyLoader._lit_align = True
    return UniqueKeyLoader


def _file_being_read(text: str) -> str | None:
    """The config file jsonargparse is reading, as the user named it, when `text` is that file's content (a value
    inside it, or one given on the command line, is not the file: its line numbers would not be the file's)."""
    from jsonargparse._util import config_load_stack

    stack = config_load_stack.get()
    if not stack:
        return None
    real_path, shown = stack[-1]
    try:
        return shown if Path(real_path).read_text() == text else None
    except (OSError, UnicodeDecodeError):
        return None


def error_sentence(e: yaml.YAMLError, name: str) -> str:
    """A YAML error in the file `name` as one sentence: where, what, and (for a syntax error) what was open."""
    if isinstance(e, DuplicateKeyError):
        return f"config file {name}, line {e.problem_mark.line + 1}: {e.problem}"
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    opened = f" ({context} that starts at line {context_mark.line + 1})" if context and context_mark else ""
    return f"config file {name}{where}: not valid YAML: {what}{opened}"


def naming_the_file(load):
    """The YAML load function `load`, whose errors on a whole config file name the file and line."""

    def load_yaml(text):
        try:
            return load(text)
        except yaml.YAMLError as e:
            name = _file_being_read(text) if isinstance(text, str) else None
            if name is None:
                raise
            raise ConfigFileError(error_sentence(e, name)) from None

    load_yaml._lit_align = True
    return load_yaml


def install() -> None:
    """Strict keys and file names in errors for every YAML jsonargparse reads (config files, sub-configs, values
    on the command line). Idempotent."""
    from jsonargparse import _loaders_dumpers, get_loader, set_loader

    base = _loaders_dumpers.get_yaml_default_loader()
    if not getattr(base, "_lit_align", False):
        # (the module global jsonargparse's yaml_load reads on every call)
        _loaders_dumpers.yaml_default_loader = unique_key_loader(base)
    if not getattr(get_loader("yaml"), "_lit_align", False):
        set_loader("yaml", naming_the_file(get_loader("yaml")), exceptions=(yaml.YAMLError,))


def load_yaml_file(path: str):
    """A config file read as lit_align's own apps read it (steer, sweeps): a key given twice refused, an error as one
    LitAlignError sentence naming the file and line."""
    from lit_align.errors import LitAlignError

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LitAlignError(f"config file {path}: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=unique_key_loader(yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise LitAlignError(error_sentence(e, path)) from None
