"""Reference log-probs: log π_ref(y_j | x_i) of every continuation j of every example i of a batch, for
objectives that compare the policy with a fixed reference (DPO, prefix-DPO, importance-reweighted SFT).

A `Reference` is objective-agnostic: given a batch it returns a `SeqLogps` (B, k) of sequence log-probs
and target-token counts, constants (no gradient). The objective says how sequence log-probs are computed
from its batch layout (layouts.py: the objective's `layout`, handed over in `configure`; e.g. the
padded pairs of logprobs.sequence_logps or prefix-DPO's shared context), so policy and reference always agree on
which tokens count. Three modes (`ReferenceSpec.mode`):

    copy             a frozen copy of the starting policy (its spec without LoRA), or another model
                     (`model`: a hub name or a path). Eval mode, no grad, never trained, a submodule of
                     the objective so it moves with it between devices, and kept out of checkpoints (it is
                     rebuilt from its spec on resume).
    disable_adapter  the policy itself with its LoRA adapter disabled (`with model.disable_adapter():`):
                     exactly the base model, with no second copy in memory. Needs a LoRA policy.
    cache            computed once before training for every split of the data module and saved to
                     `cache_dir/<split>-<key>.pt`, where key hashes (reference weights, tokenizer vocabulary,
                     chat template, batch layout, precision, the split's token ids); looked up by the batch's
                     `split` and `index`. No reference model is in memory during training, and later runs on
                     the same model and data (a β sweep) reuse the files. A file whose stored key differs
                     from the run's is never used: it is rebuilt, or refused when `build: false`, with a
                     message naming what differs (model, tokenizer, template, data, ...).

Whole-split tables (the cache, importance-reweighted SFT's weights and their refresh: `split_logps`) are
computed once over the data-parallel ranks, each taking every W-th batch, and summed: the one-process table.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor

from lit_align.layouts import Layout
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import LogpsFn, SeqLogps, token_logps
from lit_align.modeling.models import ModelSpec, load_model, shard_model

MODES = ("copy", "disable_adapter", "cache")
CACHE_FORMAT = 1


@dataclass
class ReferenceSpec:
    """Where the reference log-probs come from."""

    mode: Literal["copy", "disable_adapter", "cache"] = "copy"
    """copy (a frozen model), disable_adapter (the LoRA policy with its adapter off), or cache (a file)."""
    model: ModelSpec | None = None
    """copy / cache: the reference model when it is not the starting policy (e.g. an SFT model saved in
    Hugging Face format). It must use the policy's tokenizer."""
    cache_dir: str = "logs/reference_cache"
    """cache: directory of the cache files (shared by runs on the same model and data)."""
    build: bool = True
    """cache: compute a missing or stale cache file; false refuses to (the files must exist already)."""
    batch_size: int | None = None
    """cache: batch size while computing (default: the data module's eval_batch_size)."""


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


@contextmanager
def _evaluating(model: torch.nn.Module, disable_adapter: bool = False):
    """`model` in eval mode (no dropout), without gradient, its LoRA adapter off if asked; the training mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter() if disable_adapter else nullcontext():
            yield model
    finally:
        model.train(was_training)


def _eval_no_grad(model: torch.nn.Module, batch: dict, logps_fn: LogpsFn, disable_adapter: bool = False) -> SeqLogps:
    """logps_fn(model, batch) in eval mode (no dropout), without gradient, restoring the training mode."""
    with _evaluating(model, disable_adapter):
        out = logps_fn(model, batch)
    return SeqLogps(out.logps.detach(), out.tokens)


class Reference(torch.nn.Module):
    """Per-example reference sequence log-probs. Subclasses: FrozenReference, AdapterReference, CachedReference."""

    def __init__(self, spec: ReferenceSpec):
        super().__init__()
        self.spec = spec
        self.layout: Layout | None = None

    def configure(self, policy: torch.nn.Module, policy_spec: ModelSpec, tokenizer, layout: Layout) -> None:
        """Called once the policy is loaded (the objective's configure_model), with the objective's batch layout."""
        self.layout = layout

    def _logps(self, model: torch.nn.Module, batch: dict, disable_adapter: bool = False) -> SeqLogps:
        """`model`'s sequence log-probs of `batch` in the objective's layout, in eval mode, without gradient."""
        if self.layout is None:
            raise LitAlignError("the reference is not configured: call configure_model() first")
        return _eval_no_grad(model, batch, self.layout.logps, disable_adapter)

    def prepare(self, policy: torch.nn.Module, datamodule, *, from_policy: bool, precision: str = "32-true",
                forward_context: Callable = nullcontext) -> None:
        """Called once the data is set up, before any batch (the objective's on_fit_start / on_*_start).
        `from_policy`: the policy still holds its starting weights (not resumed, not yet trained)."""

    def forward(self, batch: dict, policy: torch.nn.Module) -> SeqLogps:
        raise NotImplementedError

    def _token_model(self, policy: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
        """The model whose per-token log-probs are the reference's, and whether its adapter is switched off."""
        raise LitAlignError(f"reference.mode: {self.spec.mode} gives sequence log-probs of a fixed data set only; an "
                            "online objective needs mode copy or disable_adapter")

    def token_logps(self, batch: dict, policy: torch.nn.Module, temperature: float = 1.0) -> Tensor:
        """(N, T) fp32 log-probs of batch["labels"] (padded rows: input_ids, attention_mask, labels) under π_ref at
        `temperature`, without gradient: an online objective's per-token KL on its own samples."""
        model, disable = self._token_model(policy)
        with _evaluating(model, disable):
            out = token_logps(model, batch["labels"], temperature=temperature, input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"], use_cache=False)
        return out.logps

    def matching(self, batch: dict, policy: torch.nn.Module, tokens: Tensor) -> SeqLogps:
        """The reference's (B, k) log-probs of `batch`, checked to cover the policy's target tokens: `tokens` (B, j),
        the policy's token counts of the batch's first j <= k continuations (IW-SFT reads the first only)."""
        ref = self(batch, policy)
        j = tokens.shape[1]
        if ref.tokens.shape[0] != tokens.shape[0] or ref.tokens.shape[1] < j or not (ref.tokens[:, :j] == tokens).all():
            raise LitAlignError("the reference log-probs do not cover the same tokens as the policy's (a stale "
                                "reference cache, or a reference with another tokenizer)")
        return ref


# -- (a) a frozen model ---------------------------------------------------------------------------------


class FrozenReference(Reference):
    def __init__(self, spec: ReferenceSpec):
        super().__init__(spec)
        self.model: torch.nn.Module | None = None
        # The copy is rebuilt from its spec, so checkpoints need not carry it: drop its weights when saving
        # and, when loading, take the ones it already has (strict loading then still checks the policy's).
        self.register_state_dict_post_hook(_drop_state)
        self.register_load_state_dict_pre_hook(_keep_state)

    def configure(self, policy: torch.nn.Module, policy_spec: ModelSpec, tokenizer, layout: Layout) -> None:
        super().configure(policy, policy_spec, tokenizer, layout)
        if self.model is not None:
            return
        spec = self.spec.model or replace(policy_spec, lora=None, gradient_checkpointing=False)
        model = load_model(spec, tokenizer)
        n_ref, n_pol = model.get_input_embeddings().num_embeddings, policy.get_input_embeddings().num_embeddings
        if n_ref != n_pol:
            raise LitAlignError(f"the reference model '{spec.name}' has {n_ref} token embeddings but the policy "
                                f"'{policy_spec.name}' has {n_pol}: they must share one tokenizer")
        model = model.eval().requires_grad_(False)
        mesh = getattr(next(policy.parameters()), "device_mesh", None)  # FSDP2: the policy's weights are DTensors
        if mesh is not None:  # shard the copy like the policy (gathered layer by layer in its forward)
            shard_model(model, mesh)
        self.model = model

    def train(self, mode: bool = True) -> "FrozenReference":
        super().train(mode)
        if self.model is not None:
            self.model.eval()  # Lightning calls .train() on the whole objective; the reference stays in eval
        return self

    def forward(self, batch: dict, policy: torch.nn.Module) -> SeqLogps:
        if self.model is None:
            raise LitAlignError("the reference model is not loaded: call configure_model() first")
        return self._logps(self.model, batch)

    def _token_model(self, policy: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
        if self.model is None:
            raise LitAlignError("the reference model is not loaded: call configure_model() first")
        return self.model, False


def _drop_state(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _keep_state(module: torch.nn.Module, state_dict: dict, prefix: str, *args) -> None:
    if module.model is not None:
        for key, value in torch.nn.Module.state_dict(module.model, prefix=prefix + "model.").items():
            state_dict.setdefault(key, value)


# -- (b) the policy with its LoRA adapter disabled -----------------------------------------------------


class AdapterReference(Reference):
    def configure(self, policy: torch.nn.Module, policy_spec: ModelSpec, tokenizer, layout: Layout) -> None:
        super().configure(policy, policy_spec, tokenizer, layout)
        if not _is_peft(policy):
            raise LitAlignError("reference.mode: disable_adapter uses the policy with its LoRA adapter switched "
                                "off, but the policy has no LoRA adapter: set policy.lora (e.g. {r: 8}), or use "
                                "reference.mode: copy or cache")
        if self.spec.model is not None:
            raise LitAlignError("reference.model is not used with reference.mode: disable_adapter (the reference "
                                "is the policy's own base model); use mode: copy for another model")

    def forward(self, batch: dict, policy: torch.nn.Module) -> SeqLogps:
        return self._logps(policy, batch, disable_adapter=True)

    def _token_model(self, policy: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
        return policy, True


# -- (c) a precomputed cache file ----------------------------------------------------------------------


def _canonical_weights(model: torch.nn.Module):
    """(name, tensor) of the base weights, with peft's wrapping taken out of the names and LoRA left out,
    so a LoRA policy and the plain model it wraps give the same fingerprint."""
    for name, p in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield name, p


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's weights: per tensor its name, shape, dtype, fp64 sum and 256 strided values."""
    h = hashlib.sha256()
    for name, p in sorted(_canonical_weights(model), key=lambda x: x[0]):
        if hasattr(p, "full_tensor"):  # FSDP2: gather the shards (every rank computes the fingerprint)
            p = p.full_tensor()
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        h.update(struct.pack("<d", flat.sum(dtype=torch.float64).item()))
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary and special tokens."""
    payload = {"vocab": sorted(tokenizer.get_vocab().items()), "special": sorted(
        (k, str(v)) for k, v in tokenizer.special_tokens_map.items())}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def data_fingerprint(examples) -> str:
    """A hash of a tokenized split: every example's context and continuation token ids, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(struct.pack("<i", len(ex.context)))
        h.update(torch.tensor(ex.context, dtype=torch.int64).numpy().tobytes())
        for cont in ex.continuations:
            h.update(struct.pack("<i", len(cont)))
            h.update(torch.tensor(cont, dtype=torch.int64).numpy().tobytes())
        h.update(struct.pack("<i", ex.prefix_len))
    return h.hexdigest()


def _key(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


class CachedReference(Reference):
    def __init__(self, spec: ReferenceSpec):
        super().__init__(spec)
        self.tables: dict[str, tuple[Tensor, Tensor]] = {}   # split -> ((n, k) fp32 logps, (n, k) tokens), on CPU
        self.files: dict[str, Path] = {}
        self._policy_spec: ModelSpec | None = None
        self._tokenizer = None

    def configure(self, policy: torch.nn.Module, policy_spec: ModelSpec, tokenizer, layout: Layout) -> None:
        super().configure(policy, policy_spec, tokenizer, layout)
        self._policy_spec, self._tokenizer = policy_spec, tokenizer

    def _model_spec(self) -> ModelSpec:
        return self.spec.model or replace(self._policy_spec, lora=None, gradient_checkpointing=False)

    def prepare(self, policy: torch.nn.Module, datamodule, *, from_policy: bool, precision: str = "32-true",
                forward_context: Callable = nullcontext) -> None:
        if datamodule is None or not hasattr(datamodule, "splits"):
            raise LitAlignError("reference.mode: cache computes the reference over the data module's splits: "
                                "fit with an AlignDataModule")
        todo = [n for n in datamodule.splits if n not in self.tables]
        if not todo:
            return
        if self._policy_spec is None:
            raise LitAlignError("the reference is not configured: call configure_model() first")
        # The model that defines the reference: the starting policy itself (its base, for a LoRA policy)
        # when it is still untouched, else a freshly loaded copy (on resume, or another model).
        use_policy = from_policy and self.spec.model is None
        model = policy if use_policy else load_model(self._model_spec(), self._tokenizer)
        common = {
            "format": CACHE_FORMAT,
            "model": weights_fingerprint(model),
            "tokenizer": tokenizer_fingerprint(self._tokenizer),
            "template": hashlib.sha256(str(self._tokenizer.chat_template).encode()).hexdigest(),
            "layout": self.layout.key,
            "precision": str(precision),
        }
        device = next(policy.parameters()).device
        moved = False
        for name in todo:
            split = datamodule.splits[name]
            meta = {**common, "data": data_fingerprint(split.examples), "examples": len(split.examples),
                    "continuations": len(split.examples[0].continuations)}
            path = Path(self.spec.cache_dir) / f"{name}-{_key(meta)}.pt"
            table, unreadable = _load_table(path, meta)
            if _any_rank(table is None, datamodule, device):  # computed together (split_logps shards it), so
                table = None                                    # every rank must take the same branch
                stale = _stale_report(Path(self.spec.cache_dir), name, meta)
                if not self.spec.build and unreadable:
                    raise LitAlignError(
                        f"reference.mode: cache: the cache file {path} of split '{name}' is unreadable ({unreadable}). "
                        "Delete it and set reference.build: true to compute it again.")
                if not self.spec.build:
                    raise LitAlignError(
                        f"reference.mode: cache: no cache file for split '{name}' matches this run "
                        f"(expected {path}). {stale or 'There is no cache file for this split.'} "
                        "Set reference.build: true to compute it, or run with the model and data it was built for.")
                if not use_policy and not moved:
                    model = model.to(device)
                    moved = True
                _info(f"reference cache: computing split '{name}' ({len(split.examples)} examples)"
                      + (f"; {stale}" if stale else ""))
                start = time.perf_counter()
                disable = use_policy and _is_peft(policy)
                table = split_logps(lambda batch: self._logps(model, batch, disable_adapter=disable),
                                    datamodule, name, device, self.spec.batch_size, forward_context,
                                    description=f"reference log-probs: {name}")
                _save_table(path, meta, table)
                _info(f"reference cache: wrote {path} in {time.perf_counter() - start:.1f} s")
            else:
                _info(f"reference cache: using {path}")
            self.tables[name], self.files[name] = table, path
        del model  # a loaded copy goes now: no reference model stays in memory during training

    def forward(self, batch: dict, policy: torch.nn.Module) -> SeqLogps:
        name = batch.get("split", "train")
        if name not in self.tables:
            raise LitAlignError(f"no reference cache for split '{name}' (have: {', '.join(self.tables) or 'none'}); "
                                "the objective prepares it in on_fit_start from the data module's splits")
        logps, tokens = self.tables[name]
        index = batch["index"].cpu()
        device = batch["index"].device
        return SeqLogps(logps[index].to(device), tokens[index].to(device))


def _info(msg: str) -> None:
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info(msg)


def _load_table(path: Path, meta: dict) -> tuple[tuple[Tensor, Tensor] | None, str]:
    """(the cached (logps, tokens), "") if `path` exists and was built for exactly `meta`; (None, why it is
    unreadable) for a truncated or foreign file; (None, "") when missing or stale. A table holding NaN or inf
    log-probs is an error naming the file (they would poison every loss)."""
    if not path.is_file():
        return None, ""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: rebuilt (or refused) like a stale one
        _info(f"reference cache: cannot read {path} ({type(e).__name__}); ignoring it")
        return None, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if not isinstance(saved, dict) or saved.get("meta") != meta:
        return None, "" if isinstance(saved, dict) else "not a reference cache file"
    logps, tokens = saved["logps"], saved["tokens"]
    shape = (meta["examples"], meta["continuations"])
    if tuple(logps.shape) != shape or tuple(tokens.shape) != shape:
        return None, f"a table of shape {tuple(logps.shape)}, not {shape}"
    bad = int((~torch.isfinite(logps)).sum())
    if bad:
        raise LitAlignError(f"reference.mode: cache: the cache file {path} holds {bad} non-finite log-prob(s) "
                            f"(NaN or inf, of {logps.numel()}): it is corrupt or was computed by a diverged model. "
                            "Delete it (it is computed again with reference.build: true).")
    return (logps, tokens), ""


def _save_table(path: Path, meta: dict, table: tuple[Tensor, Tensor]) -> None:
    """Write atomically (a concurrent run of a sweep reads either nothing or a whole file); rank 0 only."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"meta": meta, "logps": table[0], "tokens": table[1]}, tmp)
    os.replace(tmp, path)


def _stale_report(cache_dir: Path, name: str, meta: dict) -> str:
    """Which parts of the key differ in the existing cache files of split `name` (the closest one)."""
    best: list[str] | None = None
    for path in sorted(cache_dir.glob(f"{name}-*.pt")):
        try:
            other = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
        except Exception:
            continue
        differ = [k for k in meta if other.get(k) != meta[k] and k != "examples"]
        if best is None or len(differ) < len(best):
            best = differ
    if best is None:
        return ""
    return ("the existing cache for this split is stale: built for a different "
            + ", ".join(best or ["build"]))


# -- whole-split tables (importance-reweighted SFT weighs every example by its log-prob) ------------------


def split_logps(logps_of: Callable[[dict], SeqLogps], datamodule, name: str, device, batch_size: int | None = None,
                forward_context: Callable = nullcontext, description: str | None = None) -> tuple[Tensor, Tensor]:
    """(n, k) fp32 log-probs and (n, k) target-token counts of every example of split `name`, on CPU, in the
    split's index order: `logps_of(batch)` over the split's batches, unshuffled.

    In a data-parallel run every rank must call it (the work is shared): the split's batches (those of one
    process, so the numbers are bit for bit those of one process) are dealt out, rank r computing batches
    r, r + W, ... of W ranks, and the tables summed over the ranks (each entry is computed by one rank, zero
    on the others: the sum is exact). Every rank runs the same number of forward passes (one repeats a batch
    when they do not divide evenly), as a sharded model's forward is a collective (FSDP2)."""
    rank, world = _data_parallel(datamodule)
    logps, tokens, done = _split_shard(logps_of, datamodule, name, device, batch_size, forward_context,
                                       description, rank, world)
    if world > 1:
        import torch.distributed as dist

        n, k = logps.shape
        packed = torch.cat([logps.double().reshape(-1), tokens.double().reshape(-1), done.double()]).to(device)
        dist.all_reduce(packed)   # (2nk + n,) float64: fp32 values and counts < 2^53 survive it exactly
        packed = packed.cpu()
        logps, tokens = packed[: n * k].view(n, k).float(), packed[n * k: 2 * n * k].view(n, k).long()
        done = packed[2 * n * k:].long()
    if not (done == 1).all():
        raise LitAlignError(f"log-probs of split '{name}': {int((done != 1).sum())} examples were computed "
                            f"{sorted(set(done.tolist()) - {1})} times instead of once (a bug; please report it)")
    return logps, tokens


def _split_shard(logps_of: Callable[[dict], SeqLogps], datamodule, name: str, device, batch_size: int | None,
                 forward_context: Callable, description: str | None, rank: int, world: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Rank `rank` of `world`'s part of `split_logps`: (n, k) fp32 log-probs and (n, k) token counts of its
    batches, zero elsewhere, and (n,) how many times it computed each example (0 or 1)."""
    from lightning.pytorch.utilities import rank_zero_only
    from rich.progress import track

    split = datamodule.splits[name]
    n, k = len(split.examples), len(split.examples[0].continuations)
    bs = batch_size or datamodule.eval_batch_size
    batches = -(-n // bs)                                      # of one process: [b*bs, (b+1)*bs)
    mine = list(range(rank, batches, world))
    steps = -(-batches // world)                              # forward passes of every rank
    fill = [mine[0] if mine else 0] * (steps - len(mine))     # repeated, results dropped (0 or 1 batch)
    # the batch that comes out short (the split's last) is the last of its rank's stream, so the loader cuts the
    # stream into exactly these batches
    stream = [i for b in mine + fill for i in range(b * bs, min((b + 1) * bs, n))]
    loader = datamodule._loader(name, bs, shuffle=False, sampler=stream)
    logps = torch.zeros((n, k))
    tokens = torch.zeros((n, k), dtype=torch.long)
    done = torch.zeros(n, dtype=torch.long)
    for step, batch in enumerate(track(loader, description=description or f"log-probs: {name}", total=len(loader),
                                       disable=rank_zero_only.rank != 0, transient=True)):
        batch = {key: v.to(device) if isinstance(v, Tensor) else v for key, v in batch.items()}
        with forward_context():
            out = logps_of(batch)
        if step < len(mine):
            index = batch["index"].cpu()
            logps[index], tokens[index] = out.logps.detach().float().cpu(), out.tokens.cpu()
            done[index] += 1
    return logps, tokens, done


def _data_parallel(datamodule) -> tuple[int, int]:
    """(rank, world size) among the processes that share the work of `split_logps`: all of them, when they are
    the data-parallel ranks of the run (DDP, FSDP2 without tensor parallelism); (0, 1) otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0, 1
    trainer = getattr(datamodule, "trainer", None)
    replicas = (getattr(trainer, "distributed_sampler_kwargs", None) or {}).get("num_replicas")
    if replicas != dist.get_world_size():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _any_rank(flag: bool, datamodule, device) -> bool:
    """Whether `flag` holds on any of the ranks that share `split_logps` (every one of them must call this)."""
    if _data_parallel(datamodule)[1] == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def reference_split_logps(reference: Reference, policy: torch.nn.Module, datamodule, name: str,
                          forward_context: Callable = nullcontext) -> tuple[Tensor, Tensor]:
    """log π_ref and token counts (n, k) of every example of split `name`: the cache's table when the
    reference is a cache (prepared), else computed batch by batch with the reference (frozen copy, adapter
    disabled). Call `reference.prepare(...)` first."""
    if isinstance(reference, CachedReference) and name in reference.tables:
        return reference.tables[name]
    device = next(policy.parameters()).device
    return split_logps(lambda batch: reference(batch, policy), datamodule, name, device, reference.spec.batch_size,
                       forward_context, description=f"reference log-probs: {name}")


def policy_split_logps(model: torch.nn.Module, logps_fn: LogpsFn, datamodule, name: str,
                       forward_context: Callable = nullcontext, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """The same table from `model` as it is now (eval mode, no gradient): refreshing a reference from the
    current policy."""
    device = next(model.parameters()).device
    return split_logps(lambda batch: _eval_no_grad(model, batch, logps_fn), datamodule, name, device, batch_size,
                       forward_context, description=f"policy log-probs: {name}")


def build_reference(spec: ReferenceSpec | None) -> Reference:
    spec = spec or ReferenceSpec()
    classes = {"copy": FrozenReference, "disable_adapter": AdapterReference, "cache": CachedReference}
    if spec.mode not in classes:
        raise LitAlignError(f"reference.mode must be one of {', '.join(MODES)}, not '{spec.mode}'")
    return classes[spec.mode](spec)
