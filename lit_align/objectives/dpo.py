"""Direct Preference Optimization (Rafailov et al. 2023) and its common loss variants.

For a pair (x, y_w, y_l) of a prompt, a chosen and a rejected continuation, with log-probs summed over
the continuation's target tokens only (the prompt is context; the end token counts for full answers):

    h   = [log π_θ(y_w|x) - log π_ref(y_w|x)] - [log π_θ(y_l|x) - log π_ref(y_l|x)]
    L   = Σ_pairs ℓ(h) / number of pairs
    ℓ   = -log σ(βh)                                    loss: sigmoid  (label_smoothing ε: cDPO,
                                                                        -(1-ε) log σ(βh) - ε log σ(-βh))
          (-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε)    loss: robust   (Chowdhury et al. 2024)
          (h - 1/(2β))²                                  loss: ipo      (Azar et al. 2023; length-normalised
                                                                        log-probs by default, see below)
          max(0, 1 - βh)                                 loss: hinge    (SLiC / RSO)
        + α · (-log π_θ(y_w|x) / |y_w|)                  nll_weight α > 0: an NLL term on the chosen
                                                         continuation, a per-token mean per pair (RPO)

The mean is over the pairs of the whole optimizer step (every accumulated micro-batch, every device; see
objectives/base.py). π_ref is a constant: no gradient flows into it (reference.py: a frozen copy, the LoRA
policy with its adapter disabled, or a precomputed cache). With `length_normalize`, every log π (policy
and reference) is divided by its continuation's token count before h is formed (as in SimPO); the NLL
term is a per-token mean either way. `length_normalize` defaults to true for loss ipo and false for the
others: IPO follows its authors (Azar et al.'s code, confirmed to TRL, whose IPO does the same), for whom
h is a difference of per-token mean log-ratios and 1/(2β) a target on that scale; set it to false for the
paper's summed log-probs. `label_smoothing` > 0 with a loss that does not use it (ipo, hinge) is refused. Chosen and rejected rows run through the
policy in ONE forward pass (rows [0:B] chosen, [B:2B] rejected; collate.py), or, with `packed`, as one
row per pair holding the prompt once (collate_packed); log-probs are fp32 (logprobs.py). With π_θ = π_ref the
sigmoid loss is exactly log 2. With `pair_weights`, the record `weight` w_i scales pair i's loss (NLL term
included) and the mean becomes Σ_i w_i ℓ_i / Σ_i w_i over the step's pairs (objectives/pairs.py); without it the
weights are not read. The layout, the weights and the metrics are those of every pair objective (PairObjective).

Metrics (train per optimizer step, every validation set per epoch), each a mean over pairs:
{split}/loss, {split}/rewards/chosen = β(log π_θ(y_w|x) - log π_ref(y_w|x)) (detached; the sequence
log-probs, never length-normalised, whatever the loss saw),
{split}/rewards/rejected, {split}/rewards/margins (chosen - rejected), {split}/rewards/accuracy (share of
pairs whose chosen reward is strictly higher), {split}/logps/chosen and {split}/logps/rejected (policy,
summed over the continuation's tokens, not length-normalised), {split}/logps/margins (chosen - rejected)
and {split}/logps/accuracy (share of pairs whose chosen log-prob is higher: the policy's own preference,
without the reference), {split}/ab/p_match on A/B contrast sets (objectives/base.py), {split}/nll when
nll_weight > 0. Only the loss is weighted (pair_weights); the other metrics are unweighted means over pairs.
"""

from __future__ import annotations


from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import SeqLogps
from lit_align.losses import PREFERENCE_LOSSES, SMOOTHED_LOSSES, chosen_nll, preference_loss
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.pairs import PairObjective
from lit_align.objectives.reference import ReferenceSpec, build_reference


def check_preference_options(loss: str, beta: float, label_smoothing: float) -> None:
    """DPO's loss options, checked in one place (DPO and online DPO)."""
    if loss not in PREFERENCE_LOSSES:
        raise LitAlignError(f"loss must be one of {', '.join(PREFERENCE_LOSSES)}, not '{loss}'")
    if beta <= 0:
        raise LitAlignError(f"beta must be > 0, not {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise LitAlignError(f"label_smoothing must be in [0, 0.5), not {label_smoothing}")
    if label_smoothing > 0 and loss not in SMOOTHED_LOSSES:
        raise LitAlignError(f"label_smoothing {label_smoothing} has no effect with loss {loss} (only "
                            f"{' and '.join(SMOOTHED_LOSSES)} use it); set label_smoothing: 0 or another loss")


class DPO(PairObjective):
    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        beta: float = 0.1,
        loss: str = "sigmoid",
        label_smoothing: float = 0.0,
        nll_weight: float = 0.0,
        length_normalize: bool | None = None,
        reference: ReferenceSpec | None = None,
        packed: bool = False,
        pair_weights: bool = False,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            beta: β, the strength of the implicit KL penalty towards the reference (IPO: its τ).
            loss: sigmoid (DPO; with label_smoothing: cDPO), robust, ipo or hinge.
            label_smoothing: ε, the assumed probability that a preference label is flipped (sigmoid, robust;
                an error with ipo or hinge, which do not use it).
            nll_weight: α, weight of an NLL term on the chosen continuation (0: none).
            length_normalize: divide every sequence log-prob by its token count before the loss (the logged
                rewards and logps stay those of the sequence). None: true for ipo (as its authors), else false.
            reference: where π_ref comes from: mode copy (a frozen model), disable_adapter (the LoRA
                policy's base) or cache (a precomputed file).
            packed: one row per pair: the prompt once, then chosen and rejected, each attending to the prompt
                and itself (a 4D attention mask; data/collate.py collate_packed). The same losses and
                gradients, less compute and padding. Needs the sdpa or eager attention (not flash-attention).
            pair_weights: scale each pair's loss by its record's `weight` (1 without one): the step's loss is
                Σ w·ℓ / Σ w over its pairs (objectives/pairs.py). false: the weights are not read.
        """
        super().__init__(policy, optim, packed, pair_weights)
        check_preference_options(loss, beta, label_smoothing)
        if nll_weight < 0:
            raise LitAlignError(f"nll_weight must be >= 0, not {nll_weight}")
        self.beta, self.loss_name, self.label_smoothing = beta, loss, label_smoothing
        self.nll_weight = nll_weight
        self.length_normalize = loss == "ipo" if length_normalize is None else length_normalize
        self.reference = build_reference(reference)

    # -- loss -----------------------------------------------------------------------------------------
    def step(self, batch: dict) -> Sums:
        policy: SeqLogps = self.policy_logps(batch)                 # (B, 2) fp32, with gradient
        ref: SeqLogps = self.reference.matching(batch, self.model, policy.tokens)   # (B, 2) fp32, constants
        out = preference_loss(self.loss_name, policy.logps, ref.logps, policy.tokens, self.beta, self.label_smoothing,
                              self.length_normalize)                  # rewards: of the sequences
        losses = out.losses                                          # (B,)
        sums = {}
        if self.nll_weight > 0:
            nll = chosen_nll(policy.logps[:, 0], policy.tokens[:, 0])  # (B,) per-token mean per pair
            losses = losses + self.nll_weight * nll
            sums["nll"] = (nll.detach().sum(), losses.shape[0])
        return {**self.preference_sums(losses, out.chosen_rewards, out.rejected_rewards, policy.logps, batch), **sums}
