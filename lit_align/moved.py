"""Modules that moved when the package took its folders (2026-12): the old import paths keep working.

Checkpoints pickle their config dataclasses by module path (e.g. `lit_align.models.ModelSpec` before the move,
`lit_align.modeling.models.ModelSpec` after), so a checkpoint written before the move must still load, for a
resume, `lit_align export` or `load_from_checkpoint`. A finder on sys.meta_path answers an old name with the
new module (the same module object, so classes are identical), and `old_names` gives torch's weights-only
loader the old names of a class (objectives/base.py's allow_in_checkpoints).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "lit_align.models": "lit_align.modeling.models",
    "lit_align.logprobs": "lit_align.modeling.logprobs",
    "lit_align.generation": "lit_align.modeling.generation",
    "lit_align.export": "lit_align.modeling.export",
    "lit_align.builtin_models": "lit_align.builtin.parts",
    "lit_align.pretrain": "lit_align.builtin.pretrain",
    "lit_align.packaged_models": "lit_align.builtin.packaged",
    "lit_align.reference": "lit_align.objectives.reference",
    "lit_align.caa": "lit_align.steering.caa",
    "lit_align.scorers": "lit_align.eval.scorers",
    "lit_align.steering_cli": "lit_align.cli.steer",
    "lit_align.score_cli": "lit_align.cli.score",
}
"""old module path -> where it lives now."""


def old_names(cls: type) -> list[str]:
    """The dotted names `cls` had before the move (none if its module did not move)."""
    return [f"{old}.{cls.__qualname__}" for old, new in MOVED.items() if new == cls.__module__]


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module at its new path."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
