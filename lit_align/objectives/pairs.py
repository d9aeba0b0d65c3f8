"""What every preference objective on pairs (x, y_w, y_l) shares: DPO, prefix-DPO, SimPO, ORPO and listwise DPO
(a ranking of k; its pair is the best and the worst).

`PairObjective` holds, in one place:
- the batch layout (layouts.py): padded rows, chosen and rejected in ONE forward pass (collate.py, layout
  "pair"), or with `packed` one row per pair holding the prompt once (collate_packed, layout "packed_pair";
  logprobs.packed_logps). Prefix-DPO and listwise DPO choose theirs (a shared context, ranked lists). A subclass
  asks `policy_logps(batch)` for (B, 2) fp32 log-probs [chosen, rejected] and never looks at the layout itself;
- per-pair weights (`pair_weights`): the record `weight` of pair i scales its loss, and the loss of an
  optimizer step is

      L = Σ_i w_i · ℓ_i / Σ_i w_i        over all the step's pairs (every accumulated micro-batch, every device)

  through the base class's (sum, count) mechanism (objectives/base.py), so it is exact under gradient
  accumulation and across devices, and a pair of weight 2 counts exactly as that pair twice. A record without
  `weight` gets 1; a weight of 0 is refused (file, line, field) when the data is set up, negative and non-finite
  ones already by records.py. Without `pair_weights` (the default) the weights are not read: L = Σ_i ℓ_i / the
  number of pairs, bit for bit as before weights existed. The weights scale the loss only: every other metric
  (rewards, log-probs, the NLL part, ...) stays an unweighted mean over pairs. Evaluation sets are weighted the
  same way ({split}/loss = Σ w·ℓ / Σ w over the set);
- the metrics of the shared naming scheme (`preference_sums`): {split}/loss, {split}/rewards/{chosen, rejected,
  margins, accuracy} from the objective's implicit rewards, and the policy's {split}/logps/{chosen, rejected,
  margins, accuracy} (summed over the continuation's tokens; objectives/base.py `pair_sums`), plus
  {split}/ab/p_match on A/B contrast sets.
"""

from __future__ import annotations

from torch import Tensor

from lit_align.errors import DataError, LitAlignError
from lit_align.modeling.logprobs import SeqLogps, shared_prompt_logps
from lit_align.losses.preference import weighted_pair_sum
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import Objective, OptimSpec, Sums, pair_sums


class PairObjective(Objective):
    """A preference objective on (chosen, rejected) pairs; subclasses implement `step` from `policy_logps`."""

    added_settings = {"packed": False, "pair_weights": False}  # (DPO and prefix-DPO gained `pair_weights`)

    def __init__(self, policy: ModelSpec | None = None, optim: OptimSpec | None = None, packed: bool = False,
                 pair_weights: bool = False):
        super().__init__(policy, optim)
        self.packed, self.pair_weights = packed, pair_weights

    def layout_name(self) -> str:
        return "packed_pair" if self.packed else "pair"

    # -- layout ---------------------------------------------------------------------------------------
    def policy_logps(self, batch: dict) -> SeqLogps:
        """(B, k) fp32 sequence log-probs of the policy (pairs: [chosen, rejected]), with gradient, and their
        token counts, in the objective's layout. Evaluation (the module in eval mode) runs each pair's prompt once
        for both answers on padded pairs (logprobs.shared_prompt_logps: the same numbers up to float rounding);
        training (and evaluation under a sharded strategy: Objective.shares_prompts) keeps the layout's own
        computation."""
        if not self.training and self.layout.name == "pair" and self.shares_prompts():
            return shared_prompt_logps(self.model, batch)
        return self.layout.logps(self.model, batch)

    def configure_model(self) -> None:
        super().configure_model()
        attention = getattr(self.model.config, "_attn_implementation", None) or ""
        if self.layout.name == "packed_pair" and attention.startswith("flash"):
            raise LitAlignError(f"{type(self).__name__}(packed=true) needs a 4D attention mask, which {attention} "
                                "does not take; use policy.attn_implementation: sdpa, or packed: false")

    # -- weights --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.pair_weights:
            check_pair_weights(getattr(self.trainer, "datamodule", None))

    def loss_sums(self, losses: Tensor, batch: dict) -> tuple[Tensor, Tensor | int]:
        """The "loss" entry of `step` from per-pair losses (B,): (Σ w·ℓ, Σ w) with pair_weights, else (Σ ℓ, B)."""
        if self.pair_weights:
            return weighted_pair_sum(losses, batch["weight"])
        return losses.sum(), losses.shape[0]

    # -- metrics --------------------------------------------------------------------------------------
    def preference_sums(self, losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor, logps: Tensor,
                        batch: dict) -> Sums:
        """`step`'s sums from per-pair losses (B,) with gradient, detached implicit rewards (B,) and the policy's
        (B, 2) sequence log-probs: the (weighted) loss, then unweighted means over pairs."""
        n = losses.shape[0]
        return {
            "loss": self.loss_sums(losses, batch),
            "rewards/chosen": (chosen_rewards.sum(), n),
            "rewards/rejected": (rejected_rewards.sum(), n),
            "rewards/margins": ((chosen_rewards - rejected_rewards).sum(), n),
            "rewards/accuracy": ((chosen_rewards > rejected_rewards).float().sum(), n),
            **pair_sums(logps.detach(), batch.get("contrast", False)),   # logps/*, and ab/p_match on A/B sets
        }


def check_pair_weights(datamodule) -> None:
    """Refuse a pair of weight 0 in any split of the data module (it would train on nothing, and a step of such
    pairs only would divide by Σ w = 0), naming the record's file, line and field."""
    for split in getattr(datamodule, "splits", {}).values():
        for ex in split.examples:
            if ex.weight is not None and not ex.weight > 0:
                raise DataError(ex.where, f"pair_weights: true needs a weight > 0 on every pair, got {ex.weight!r} "
                                "(leave the pair out instead, or set pair_weights: false)", field="weight")


def check_shared_context(objective) -> None:
    """Refuse `shared_context` (prefix-DPO, listwise DPO: the context once, its continuations on its key/value
    cache) with gradient checkpointing, which turns the cache off."""
    if objective.shared_context and objective.policy_spec.gradient_checkpointing:
        raise LitAlignError(f"{type(objective).__name__}: gradient checkpointing turns the key/value cache off; "
                            "set shared_context: false with it")
