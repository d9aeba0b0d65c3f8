"""Steering vectors by contrastive activation addition (CAA; Rimsky et al. 2024, "Steering Llama 2 via Contrastive
Activation Addition"): extract from A/B contrast pairs, add to the residual stream with a multiplier.

Extraction. For contrast pairs (x_i, m_i, n_i) of a question and its matching / not-matching answer (records
{question, answer_matching_behavior, answer_not_matching_behavior}, read, tokenized and padded by the same data
module as training: data/datamodule.py, layout "pair", rows [0:B] matching, [B:2B] not matching), and a decoder
block l (0-based, `decoder_layers(model)[l]`), let h_l(x, y) (H,) be the block's output (the residual stream
after block l) at the read position of the sequence x + y. Then

    v_l = 1/N Σ_i [h_l(x_i, m_i) - h_l(x_i, n_i)]                   method "mean_diff" (CAA)
    v_l = (u·d̄) u,  u = first right-singular vector of D (N, H)      method "pca": the direction explaining most of
          (rows d_i = the differences, uncentred), sign s.t. u·d̄ > 0    the differences, scaled to the mean
                                                                    difference's component along it

Read positions (`read`): "answer" (CAA's): the answer-letter token, found as the first continuation token where
the matching and not-matching rows differ (e.g. 'A' vs 'B' inside " (A)" / " (B)", whatever the tokenizer
merges); "answer_end": the last continuation token (the end token of full answers); "continuation_mean": the
mean over the continuation's tokens. (The last context token is not offered: both rows of a pair share the
context, and a causal model's activations there are identical, so their difference is 0.) Positions are found
from `labels` (-100 on the context) and `attention_mask`, so left and right padding give the same vectors; the
forward passes position ids counted over real tokens.

Application. With a multiplier α, at each chosen block l a forward hook adds α·v_l to the block's output

    h_l(t) <- h_l(t) + α v_l     at every position t ("all"), or at t >= the prompt length ("after_prompt",
                                 CAA's choice: from the first continuation token on; the first continuation
                                 token's probability is read at the last prompt position, hence unsteered)

Positions are position ids: the model's own (explicit `position_ids`, else 0.. after the key/value cache), so
`generate` with a KV cache (one token per step, left-padded prompts, position ids from the attention mask) and
the shared-context / packed batch layouts of collate.py all agree with "the prompt length" = the number of
real context tokens of each row (batch["context_tokens"]). At multiplier 0 nothing is added (bit-identical
logits). The hooks are removed when the context exits, also on an exception.

Metric (CAA's, the same as objectives/base.py's {split}/ab/p_match): per item
p_match = p(m) / (p(m) + p(n)) = σ(log π(m|x) - log π(n|x)) over the whole answer continuations, averaged over
items; match_rate = share of items with log π(m|x) > log π(n|x). Steerability (Tan et al. 2024, "Analyzing the
generalization and reliability of steering vectors"): per item, the least-squares slope of the logit
difference log π(m|x) - log π(n|x) against the multiplier; its mean over items, and the share of
anti-steerable items (slope < 0).

Usage:

    from lit_align.steering.vectors import SteeringVector, contrast_margins, extract_from_data
    datamodule.connect(tokenizer, LAYOUTS["pair"]); datamodule.setup("fit")       # an AlignDataModule
    vector = extract_from_data(model, datamodule, "train", layers=[2, 3])  # or extract(model, batches, ...)
    vector.save("logs/caa/vector.safetensors")
    vector = SteeringVector.load("logs/caa/vector.safetensors")
    with vector.apply(model, multiplier=2.0, layers=[3]) as steer:     # positions="after_prompt"
        for batch in datamodule.eval_loader("val_id"):
            steer.set_prompt_lengths(batch)                            # batch["context_tokens"], per batch
            logps = sequence_logps(model, batch).logps                 # (B, 2) steered
    with vector.apply(model, 4.0, layers=[3], prompt_lengths=enc["attention_mask"].sum(-1)):
        out = model.generate(**enc, max_new_tokens=20)                 # steered from the first new token on

In a Lightning run (any objective's validation / test, e.g. CAA on top of a fine-tuned policy), add the
callback `SteerDuringEval(vector=..., multiplier=..., layers=...)` (callbacks/steering.py). `lit_align steer --config
X.yaml` (cli/steer.py) extracts, evaluates a grid of layers x multipliers and writes a CSV, a figure and a summary.
Under DDP every rank hooks its own replica; under FSDP2 the hooks sit on the sharded blocks, whose outputs are
full local activations (the vector is moved to their device and dtype).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import IGNORE, sequence_logps, shared_prompt_logps
from lit_align.modeling.models import decoder_layers

METHODS = ("mean_diff", "pca")
READS = ("answer", "answer_end", "continuation_mean")
POSITIONS = ("after_prompt", "all")
CHECKS = ("weights", "architecture", "none")
"""How `apply` compares the model with the one the vector came from: "weights" (architecture and a sample of the
input-embedding weights), "architecture" (config only: e.g. a fully fine-tuned descendant), "none" (hidden size
only). A LoRA-adapted model keeps its base model's weights fingerprint."""
FORMAT = "lit_align.steering/1"
_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
              "intermediate_size")


# -- the blocks ---------------------------------------------------------------------------------------------


def steering_blocks(model: torch.nn.Module) -> tuple[list[torch.nn.Module], torch.nn.Module]:
    """(the decoder blocks of `model`, in order, the module that runs them): the blocks of the largest
    ModuleList of decoder layers (Llama, Qwen2/3, Mistral, Gemma: model.layers; GPT-2: transformer.h;
    GPT-NeoX: gpt_neox.layers; also inside peft and FSDP2 wrappers), and its parent (e.g. LlamaModel), whose
    inputs say where each position is."""
    layers = decoder_layers(model)
    ids = {id(m) for m in layers}
    best: tuple[list[torch.nn.Module], torch.nn.Module] | None = None
    for parent in model.modules():
        for child in parent.children():
            if isinstance(child, torch.nn.ModuleList):
                blocks = [b for b in child if id(b) in ids]
                if blocks and len(blocks) == len(child) and (best is None or len(blocks) > len(best[0])):
                    best = (blocks, parent)
    if best is None:
        raise LitAlignError(f"steering: found no decoder blocks (a ModuleList of decoder layers) in "
                            f"{type(model).__name__}")
    return best


def layer_indices(layers: "list[int] | str | None", n: int) -> list[int]:
    """"all" / None -> 0..n-1; a list -> its indices (negative ones count from the end), checked."""
    if layers is None or layers == "all":
        return list(range(n))
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(layers, str) or not all(isinstance(i, int) for i in layers):
        raise LitAlignError(f"steering: layers must be a list of block indices or 'all', not {layers!r}")
    out = []
    for i in layers:
        if not -n <= i < n:
            raise LitAlignError(f"steering: layer {i} does not exist: the model has {n} blocks, so a layer is "
                                f"0..{n - 1} (or -{n}..-1, counted from the end)")
        out.append(i % n)
    return sorted(set(out))


# -- identity of the model and the tokenizer ----------------------------------------------------------------


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the wrapped model


def _text_config(model: torch.nn.Module):
    config = getattr(_base(model), "config", None)
    if config is None:
        raise LitAlignError(f"steering: {type(model).__name__} has no Hugging Face config")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(model: torch.nn.Module) -> int:
    return int(_text_config(model).hidden_size)


def model_fingerprint(model: torch.nn.Module) -> dict:
    """{architecture: the config's shape fields, config_sha, weights: 32 numbers from 16 rows of the input
    embedding spread over the vocabulary (their sums and norms, fp64)}. Compared with a tolerance, so the same
    weights in bf16 and fp32 match. Under FSDP2 the embedding is gathered: call it on every rank."""
    config = _text_config(model)
    arch = {k: getattr(config, k, None) for k in _ARCH_KEYS}
    weight = _base(model).get_input_embeddings().weight.detach()
    if hasattr(weight, "full_tensor"):  # an FSDP2 DTensor: a collective
        weight = weight.full_tensor()
    rows = weight[torch.linspace(0, weight.shape[0] - 1, 16).long().to(weight.device)].double().cpu()  # (16, H)
    stats = torch.cat([rows.sum(-1), rows.norm(dim=-1)]).tolist()
    return {"architecture": arch, "config_sha": _sha(json.dumps(arch, sort_keys=True)), "weights": stats}


def tokenizer_identity(tokenizer, chat_template: bool | None = None) -> dict:
    """{vocab_sha, template_sha, chat_template: whether prompts were rendered with it}."""
    vocab = sorted(tokenizer.get_vocab().items())
    return {"vocab_sha": _sha(json.dumps(vocab)), "template_sha": _sha(tokenizer.chat_template or ""),
            "chat_template": bool(tokenizer.chat_template) if chat_template is None else bool(chat_template)}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the vector ---------------------------------------------------------------------------------------------


@dataclass
class SteeringVector:
    """One steering direction per decoder block, with where it came from."""

    directions: dict[int, Tensor]
    """block index -> (H,) fp32 on CPU: the vector added (times the multiplier) to that block's output."""
    fingerprint: dict
    """model_fingerprint() of the model it was extracted from."""
    tokenizer: dict = field(default_factory=dict)
    """tokenizer_identity() of the data's tokenizer and template."""
    method: str = "mean_diff"
    read: str = "answer"
    n_pairs: int = 0
    source: str = ""
    """The data it was extracted from (the data module's split label)."""
    resid_norms: dict[int, float] = field(default_factory=dict)
    """block index -> mean norm of the residual stream at the read positions (for scale: |v| / that)."""

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def norms(self) -> dict[int, float]:
        return {i: float(v.norm()) for i, v in sorted(self.directions.items())}

    def metadata(self) -> dict:
        return {"format": FORMAT, "fingerprint": self.fingerprint, "tokenizer": self.tokenizer,
                "method": self.method, "read": self.read, "n_pairs": self.n_pairs, "source": self.source,
                "layers": self.layers, "hidden_size": self.hidden_size,
                "norms": {str(i): n for i, n in self.norms.items()},
                "resid_norms": {str(i): n for i, n in sorted(self.resid_norms.items())}}

    def save(self, path: "str | Path") -> Path:
        """One safetensors file: tensors `layer.<i>` (H,) fp32, the rest as JSON under the metadata key
        `lit_align.steering.vectors`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({f"layer.{i}": v.contiguous() for i, v in sorted(self.directions.items())}, str(path),
                  metadata={"lit_align.steering.vectors": json.dumps(self.metadata())})
        return path

    @classmethod
    def load(cls, path: "str | Path") -> "SteeringVector":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LitAlignError(f"steering vector {path}: file not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("lit_align.steering.vectors", "null"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) on a corrupt file
            raise LitAlignError(f"steering vector {path}: not a readable safetensors file ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise LitAlignError(f"steering vector {path}: no lit_align steering metadata (not written by "
                                "SteeringVector.save)")
        directions = {int(k.split(".", 1)[1]): v.float() for k, v in tensors.items() if k.startswith("layer.")}
        return cls(directions, meta["fingerprint"], meta.get("tokenizer", {}), meta["method"], meta["read"],
                   int(meta["n_pairs"]), meta.get("source", ""),
                   {int(k): float(v) for k, v in meta.get("resid_norms", {}).items()})

    def check(self, model: torch.nn.Module, check: str = "weights", tokenizer=None) -> None:
        """Refuse (LitAlignError) a model this vector does not belong to (see CHECKS)."""
        if check not in CHECKS:
            raise LitAlignError(f"steering: check must be one of {', '.join(CHECKS)}, not '{check}'")
        h = hidden_size(model)
        if h != self.hidden_size:
            raise LitAlignError(f"steering: this vector has {self.hidden_size} dimensions, the model's residual "
                                f"stream {h}: it was extracted from another model ({self._origin()}).")
        n = len(steering_blocks(model)[0])
        if max(self.layers) >= n:
            raise LitAlignError(f"steering: the vector has layer {max(self.layers)}, the model only {n} blocks")
        if check == "none":
            return
        mine = model_fingerprint(model)
        if mine["config_sha"] != self.fingerprint["config_sha"]:
            diff = {k: (self.fingerprint["architecture"].get(k), v) for k, v in mine["architecture"].items()
                    if self.fingerprint["architecture"].get(k) != v}
            raise LitAlignError(f"steering: the vector was extracted from another architecture ({self._origin()}; "
                                f"differs in {diff}, vector vs model). Extract one from this model.")
        if check == "weights":
            a, b = torch.tensor(self.fingerprint["weights"]), torch.tensor(mine["weights"])
            if not torch.allclose(a, b, rtol=1e-2, atol=1e-2 * float(a.abs().mean())):
                raise LitAlignError(f"steering: the vector was extracted from a model with other weights "
                                    f"({self._origin()}): its embedding fingerprint differs from this model's. "
                                    "Extract a vector from this model, or apply with check='architecture' to use "
                                    "it on a fine-tuned descendant on purpose.")
        if tokenizer is not None and self.tokenizer:
            vocab = tokenizer_identity(tokenizer)["vocab_sha"]
            if vocab != self.tokenizer.get("vocab_sha"):
                raise LitAlignError(f"steering: the vector was extracted with another tokenizer ({self._origin()})")

    def _origin(self) -> str:
        arch = self.fingerprint.get("architecture", {})
        return (f"{arch.get('model_type')}, hidden {arch.get('hidden_size')}, {arch.get('num_hidden_layers')} "
                f"layers, from {self.source or 'unknown data'}")

    def apply(self, model: torch.nn.Module, multiplier: float = 1.0, layers: "list[int] | str | None" = None,
              positions: str = "after_prompt", prompt_lengths: "int | Tensor | dict | None" = None,
              check: str = "weights", tokenizer=None) -> "Steering":
        """A context manager adding `multiplier` x the vector to the outputs of `layers` (default: every layer
        of the vector) at `positions` ("after_prompt" needs prompt lengths: here, or per batch through
        `Steering.set_prompt_lengths`). Refuses a model the vector does not belong to (`check`)."""
        self.check(model, check, tokenizer)
        chosen = self.layers if layers is None or layers == "all" else layer_indices(layers, len(steering_blocks(model)[0]))
        missing = [i for i in chosen if i not in self.directions]
        if missing:
            raise LitAlignError(f"steering: the vector has no direction for layer(s) {missing} (it has {self.layers})")
        if positions not in POSITIONS:
            raise LitAlignError(f"steering: positions must be one of {', '.join(POSITIONS)}, not '{positions}'")
        return Steering(model, {i: self.directions[i] for i in chosen}, multiplier, positions, prompt_lengths)


class Steering:
    """Forward hooks that add `multiplier` x direction to the chosen blocks' outputs while the context is open.

    `multiplier` may be changed between forward passes (e.g. a grid); `set_prompt_lengths` sets, per batch, the
    first steered position of each row for "after_prompt": an int (every row), a (S,) tensor (S = rows, or a
    divisor of them: rows continuation-major as in collate.py, rows r and r + S share a prompt), or a batch of
    collate.py (its `context_tokens`)."""

    def __init__(self, model: torch.nn.Module, directions: dict[int, Tensor], multiplier: float, positions: str,
                 prompt_lengths=None):
        self.model, self.directions, self.multiplier, self.positions = model, directions, float(multiplier), positions
        self.prompt_lengths: Tensor | None = None
        self.set_prompt_lengths(prompt_lengths)
        self._position_ids: Tensor | None = None  # (1 or N, T) of the forward in flight
        self._cast: dict[tuple, Tensor] = {}      # (layer, device, dtype) -> direction
        self._handles: list = []

    def set_prompt_lengths(self, value: "int | Tensor | dict | None") -> None:
        if isinstance(value, dict):
            value = value["context_tokens"]
        if value is None:
            self.prompt_lengths = None
        else:
            self.prompt_lengths = torch.as_tensor(value, dtype=torch.long).reshape(-1)

    def __enter__(self) -> "Steering":
        blocks, runner = steering_blocks(self.model)
        try:
            self._handles.append(runner.register_forward_pre_hook(self._note_positions, with_kwargs=True))
            for i in self.directions:
                self._handles.append(blocks[i].register_forward_hook(self._hook(i)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._position_ids = None

    @property
    def active(self) -> bool:
        return bool(self._handles)

    # the runner's inputs: where each position of this forward sits (KV cache: one new token per step)
    def _note_positions(self, module, args, kwargs) -> None:
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        pos = kwargs.get("position_ids")
        if pos is None and x is not None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
            pos = torch.arange(past, past + x.shape[1], device=x.device)[None]       # (1, T), as the model does
        elif pos is not None and pos.ndim == 3:  # multimodal rope (3, N, T): the text positions
            pos = pos[0]
        self._position_ids = pos

    def _mask(self, hidden: Tensor) -> Tensor:
        """(N, T, 1) bool: positions at or after each row's prompt length."""
        if self.prompt_lengths is None:
            raise LitAlignError("steering: positions 'after_prompt' needs the prompt lengths: pass prompt_lengths "
                                "to apply(), or call set_prompt_lengths(batch) before each forward (or use "
                                "positions='all')")
        N, T = hidden.shape[:2]
        pos = self._position_ids
        if pos is None or pos.shape[-1] != T:
            pos = torch.arange(T, device=hidden.device)[None]
        starts = self.prompt_lengths.to(hidden.device)
        if starts.numel() not in (1, N):
            if N % starts.numel():
                raise LitAlignError(f"steering: {starts.numel()} prompt lengths for a batch of {N} rows")
            starts = starts.repeat(N // starts.numel())                  # continuation-major rows (collate.py)
        return (pos.to(hidden.device) >= starts[:, None])[..., None]  # (N, T, 1)

    def _hook(self, layer: int):
        def add(module, args, output):
            if self.multiplier == 0:
                return None  # nothing added: bit-identical
            hidden = output[0] if isinstance(output, tuple) else output  # (N, T, H)
            key = (layer, hidden.device, hidden.dtype)
            if key not in self._cast:
                self._cast[key] = self.directions[layer].to(hidden.device, hidden.dtype)
            steered = hidden + self.multiplier * self._cast[key]
            if self.positions == "after_prompt":
                steered = torch.where(self._mask(hidden), steered, hidden)  # unsteered positions: exactly as they were
            return (steered, *output[1:]) if isinstance(output, tuple) else steered
        return add


# -- extraction ---------------------------------------------------------------------------------------------


def read_weights(input_ids: Tensor, labels: Tensor, read: str = "answer") -> Tensor:
    """(2B, T) fp32 weights over positions whose weighted sum of activations is the read vector of each row:
    one-hot at the answer letter / the last continuation token, or uniform over the continuation. Rows [0:B]
    matching, [B:2B] not matching (collate.py), any padding side; labels != -100 mark continuation tokens."""
    if read not in READS:
        raise LitAlignError(f"steering: read must be one of {', '.join(READS)}, not '{read}'")
    target = labels != IGNORE                                            # (2B, T)
    N = input_ids.shape[0]
    if N % 2:
        raise LitAlignError("steering: extraction needs pair batches (matching then not-matching rows)")
    weights = torch.zeros(target.shape, dtype=torch.float32, device=input_ids.device)
    if read == "continuation_mean":
        return target.float() / target.sum(-1, keepdim=True).clamp(min=1)
    B = N // 2
    for i in range(B):
        cols_m, cols_n = target[i].nonzero()[:, 0], target[B + i].nonzero()[:, 0]
        if read == "answer_end":
            weights[i, cols_m[-1]], weights[B + i, cols_n[-1]] = 1.0, 1.0
            continue
        L = min(len(cols_m), len(cols_n))
        differ = (input_ids[i, cols_m[:L]] != input_ids[B + i, cols_n[:L]]).nonzero()
        if not len(differ):
            raise LitAlignError(f"steering: pair {i} of a batch has answers that agree on all {L} tokens of the "
                                "shorter one: there is no answer-letter position (use read: answer_end)")
        j = int(differ[0, 0])
        weights[i, cols_m[j]], weights[B + i, cols_n[j]] = 1.0, 1.0
    return weights


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def contrast_activations(model: torch.nn.Module, batch: dict, layers: list[int], read: str = "answer"
                         ) -> dict[int, Tensor]:
    """{layer: (2B, H) fp32} the read vector of every row of a pair batch at each block's output."""
    blocks, _ = steering_blocks(model)
    batch = _to(batch, _device(model))
    ids, mask = batch["input_ids"], batch["attention_mask"]             # (2B, T)
    weights = read_weights(ids, batch["labels"], read)                  # (2B, T)
    out: dict[int, Tensor] = {}

    def capture(i: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output      # (2B, T, H)
            out[i] = torch.einsum("nt,nth->nh", weights, hidden.float())    # (2B, H): only the read positions
        return hook

    handles = [blocks[i].register_forward_hook(capture(i)) for i in layers]
    try:  # position ids over real tokens: left and right padding give the same activations
        model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def extract(model: torch.nn.Module, batches: Iterable[dict], layers: "list[int] | str" = "all",
            read: str = "answer", method: str = "mean_diff", max_pairs: int | None = None, tokenizer=None,
            chat_template: bool | None = None, source: str = "") -> SteeringVector:
    """A SteeringVector from contrast-pair batches (collate.py's padded layout "pair": e.g.
    `datamodule.eval_loader("train")`), over at most `max_pairs` pairs in order (module docstring)."""
    if method not in METHODS:
        raise LitAlignError(f"steering: method must be one of {', '.join(METHODS)}, not '{method}'")
    if max_pairs is not None and max_pairs < 1:
        raise LitAlignError(f"steering: n_pairs must be >= 1, not {max_pairs}")
    chosen = layer_indices(layers, len(steering_blocks(model)[0]))
    was_training = model.training
    model.eval()
    diffs: dict[int, list[Tensor]] = {i: [] for i in chosen}            # (b, H) fp32 per batch
    norms: dict[int, float] = {i: 0.0 for i in chosen}
    n = 0
    try:
        for batch in batches:
            if batch.get("num_continuations", 2) != 2 or "labels" not in batch:
                raise LitAlignError("steering: extraction needs contrast pairs in the padded pair layout (the data "
                                    "module connected with kind 'pair')")
            B = batch["input_ids"].shape[0] // 2
            take = B if max_pairs is None else min(B, max_pairs - n)
            acts = contrast_activations(model, batch, chosen, read)
            for i, a in acts.items():
                diffs[i].append((a[:take] - a[B: B + take]).cpu())
                norms[i] += float(a[:take].norm(dim=-1).sum() + a[B: B + take].norm(dim=-1).sum())
            n += take
            if max_pairs is not None and n >= max_pairs:
                break
    finally:
        model.train(was_training)
    if n == 0:
        raise LitAlignError("steering: no contrast pairs to extract from")
    directions = {i: _direction(torch.cat(d).double(), method).float() for i, d in diffs.items()}
    return SteeringVector(directions, model_fingerprint(model),
                          tokenizer_identity(tokenizer, chat_template) if tokenizer is not None else {},
                          method, read, n, source, {i: s / (2 * n) for i, s in norms.items()})


def extract_from_data(model: torch.nn.Module, datamodule, split: str = "train", **options) -> SteeringVector:
    """`extract` over a set-up AlignDataModule's split (connected with layout "pair"), in file order, recording its
    tokenizer, whether prompts were rendered with the chat template, and the source. `options`: those of
    `extract` (layers, read, method, max_pairs)."""
    from lit_align.data.tokenize import Tokenizer

    if datamodule.tokenizer is None or split not in datamodule.splits:
        raise LitAlignError(f"steering: the data module has no split '{split}' set up: connect(tokenizer, 'pair') "
                            "and setup() it first")
    return extract(model, datamodule.eval_loader(split), tokenizer=datamodule.tokenizer,
                   chat_template=Tokenizer(datamodule.tokenizer, datamodule.spec).use_template,
                   source=datamodule.summaries[split].source, **options)


def _direction(d: Tensor, method: str) -> Tensor:
    """(n, H) differences -> (H,) direction (module docstring)."""
    mean = d.mean(0)
    if method == "mean_diff" or d.shape[0] == 1:
        return mean
    u = torch.linalg.svd(d, full_matrices=False).Vh[0]                  # (H,) unit, sign arbitrary
    return (u @ mean) * u  # the mean difference's component along u: along +d̄ whatever u's sign, norm |u·d̄|


# -- evaluation ---------------------------------------------------------------------------------------------


@torch.no_grad()
def pair_logps(model: torch.nn.Module, batches: Iterable[dict], steering: Steering | None = None) -> Tensor:
    """(n_items, 2) fp32: log π(m|x) and log π(n|x) per contrast pair (whole continuations), under `steering` if
    given (its prompt lengths are set from each batch). Each item's prompt runs once for both answers
    (logprobs.shared_prompt_logps): steering reads the explicit position ids, so "after_prompt" leaves the prompt
    pass unsteered and steers the answers from their first token, as on the padded rows."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in batches:
            batch = _to(batch, _device(model))
            if steering is not None:
                steering.set_prompt_lengths(batch)
            out.append(shared_prompt_logps(model, batch).logps.float().cpu())  # (B, 2), each prompt run once
    finally:
        model.train(was_training)
    return torch.cat(out)


def contrast_margins(model: torch.nn.Module, batches: Iterable[dict], steering: Steering | None = None) -> Tensor:
    """(n_items,) fp32: log π(m|x) - log π(n|x) per contrast pair (whole continuations), under `steering` if given."""
    logps = pair_logps(model, batches, steering)
    return logps[:, 0] - logps[:, 1]


@torch.no_grad()
def contrast_margins_grid(model: torch.nn.Module, batches: Iterable[dict], directions: dict[int, Tensor],
                          multipliers: list[float], on_batch=None) -> dict[tuple[int, float], Tensor]:
    """{(layer, multiplier): (n_items,) fp32 margins}: what `contrast_margins` gives under a Steering of that one layer
    and multiplier with positions "after_prompt", for a whole grid at a fraction of the cost. Steering starts at the
    first continuation token, so the prompt's activations (and keys/values) are unsteered at every layer: each item's
    prompt is run once and its key/value cache kept; per layer, one forward runs the continuations of both answers at
    every multiplier (2M rows), each row steered by its own multiplier, on that cache (cropped back to the prompt
    after each layer). The first continuation token's log-prob, read at the last prompt position, is the unsteered
    one for every setting. `on_batch(n_items)` is called after each batch (a progress bar)."""
    import inspect

    blocks, _ = steering_blocks(model)
    device = _device(model)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    was_training = model.training
    model.eval()
    M = len(multipliers)
    row_mult = torch.tensor([m for m in multipliers for _ in range(2)], dtype=torch.float32, device=device)  # (2M,)
    cast = {layer: v.to(device) for layer, v in directions.items()}
    out: dict[tuple[int, float], list[Tensor]] = {(layer, m): [] for layer in directions for m in multipliers}
    try:
        for batch in batches:
            B = batch["context_tokens"].numel()
            for i in range(B):
                P = int(batch["context_tokens"][i])
                rows = []
                for r in (i, B + i):                                    # matching, not matching (collate.py)
                    keep = batch["attention_mask"][r].bool()
                    rows.append((batch["input_ids"][r][keep], batch["labels"][r][keep]))
                if not torch.equal(rows[0][0][:P], rows[1][0][:P]) or (rows[0][1][:P] != IGNORE).any():
                    raise LitAlignError("steering grid: a pair's rows do not share their first context_tokens "
                                        "tokens as an unlabelled prompt")
                prompt = model(input_ids=rows[0][0][:P][None].to(device), use_cache=True)
                cache = prompt.cache if "cache" in prompt else prompt.past_key_values   # (transformers 5.2x: cache)
                first = prompt.logits[0, -1].float().log_softmax(-1)    # (V,) predicts position P, unsteered
                conts = [ids[P:] for ids, _ in rows]                    # each answer's continuation tokens
                targets = [labels[P:] for _, labels in rows]
                C = max(len(c) for c in conts)
                ids = torch.zeros((2, C), dtype=torch.long)             # right-padded: no real token sees a pad
                for a, c in enumerate(conts):
                    ids[a, : len(c)] = c
                ids = ids.repeat(M, 1).to(device)                       # (2M, C): rows (m_0, match), (m_0, not), ...
                cache.batch_repeat_interleave(2 * M)
                for layer, v in cast.items():
                    def add(module, args, output, v=v):
                        hidden = output[0] if isinstance(output, tuple) else output          # (2M, C, H)
                        steered = hidden + row_mult.to(hidden.dtype)[:, None, None] * v.to(hidden.dtype)
                        return (steered, *output[1:]) if isinstance(output, tuple) else steered
                    handle = blocks[layer].register_forward_hook(add)
                    try:
                        logps = model(input_ids=ids, **{cache_kw: cache}, use_cache=True).logits.float().log_softmax(-1)
                    finally:
                        handle.remove()
                    cache.crop(-C)                                      # back to the prompt (negative: remove C)
                    for j, m in enumerate(multipliers):
                        seq = []
                        for a in range(2):
                            c, t, lp = conts[a], targets[a], logps[2 * j + a]   # lp (C, V): predicts c[1:]
                            total = first[c[0]] if t[0] != IGNORE else first.new_zeros(())
                            later = (t[1:] != IGNORE).to(device)
                            picked = lp[: len(c) - 1].gather(-1, c[1:, None].to(device)).squeeze(-1)
                            seq.append(total + (picked * later).sum())
                        out[(layer, m)].append((seq[0] - seq[1]).float().cpu()[None])
            if on_batch is not None:
                on_batch(B)
    finally:
        model.train(was_training)
    return {key: torch.cat(values) for key, values in out.items()}


def p_match(margins: Tensor) -> float:
    """CAA's p(m) / (p(m) + p(n)) = σ(margin), averaged over items."""
    return float(torch.sigmoid(margins).mean())


def match_rate(margins: Tensor) -> float:
    """Share of items whose matching answer is the more likely one."""
    return float((margins > 0).float().mean())


def steerability(margins: Tensor, multipliers: "list[float] | Tensor") -> Tensor:
    """margins (M, n) at M multipliers -> (n,) per-item least-squares slope of the margin against the multiplier
    (Tan et al. 2024). Its mean is the steerability; the share of negative slopes, the anti-steerable items."""
    x = torch.as_tensor(multipliers, dtype=torch.float64)
    if x.numel() < 2 or float(x.var()) == 0:
        raise LitAlignError("steering: the steerability slope needs at least two different multipliers")
    xc = (x - x.mean())[:, None]                                         # (M, 1)
    y = margins.double()
    return ((xc * (y - y.mean(0))).sum(0) / (xc ** 2).sum()).float()
