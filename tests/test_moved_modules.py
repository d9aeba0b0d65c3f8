"""Modules that moved into folders (lit_align/moved.py): checkpoints written before the move still load, and the
old import paths give the same module objects."""

import importlib
import io

import torch

from lit_align.modeling.models import LoraSpec, ModelSpec
from lit_align.moved import MOVED
from lit_align.objectives import ReferenceSpec  # noqa: F401 (registers the objectives' checkpoint classes)
from lit_align.objectives.reference import ReferenceSpec as Ref


def test_every_old_module_path_is_the_new_module():
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old


def _pickled_under_old_names(obj) -> bytes:
    """torch.save of `obj` with its classes named by their pre-move module paths, as an old checkpoint holds them."""
    renamed = {ModelSpec: "lit_align.models", LoraSpec: "lit_align.models", Ref: "lit_align.reference"}
    saved = {cls: cls.__module__ for cls in renamed}
    try:
        for cls, old in renamed.items():
            cls.__module__ = old
        buffer = io.BytesIO()
        torch.save(obj, buffer)
    finally:
        for cls, module in saved.items():
            cls.__module__ = module
    return buffer.getvalue()


def test_a_checkpoint_written_before_the_move_loads_weights_only_and_in_full():
    hparams = {"policy": ModelSpec(name="builtin:tiny", lora=LoraSpec(r=4)), "reference": Ref(mode="copy")}
    data = _pickled_under_old_names({"hyper_parameters": hparams})
    assert b"lit_align.models" in data and b"lit_align.reference" in data  # the old names really are in the file
    for weights_only in (True, False):  # Lightning's loader / export's and resume's full unpickling
        loaded = torch.load(io.BytesIO(data), weights_only=weights_only)["hyper_parameters"]
        assert loaded == hparams and type(loaded["policy"]) is ModelSpec and type(loaded["reference"]) is Ref
