"""A reward model: a scalar head on the decoder, trained with the Bradley-Terry loss (as in InstructGPT,
Ouyang et al. 2022, and Stiennon et al. 2020).

For a prompt x with k >= 2 completions y_1 ≻ y_2 ≻ ... ≻ y_k ranked best first (a pair: y_w ≻ y_l), with
r(x, y) the score head's output at the last token of prompt + completion:

    L = Σ_prompts ℓ / number of prompts,    ℓ = -1/C(k,2) Σ_{j<l} log σ(r(x, y_j) - r(x, y_l))

(a pair: ℓ = -log σ(r_w - r_l)). The mean is over the prompts (pairs) of the whole optimizer step: every
accumulated micro-batch, every device (objectives/base.py). There is no reference model and no KL term; only
reward differences are learnt, so the rewards' offset is arbitrary. Record weights are not used.

The model is transformers' sequence-classification class of the policy's architecture with num_labels=1
(models.load_model, head "score"): for builtin:tiny / builtin:small the same Llama config with a `score` head,
for a hub name or a directory `AutoModelForSequenceClassification.from_pretrained` (a causal LM's decoder
loads, its LM head is dropped, the score head starts random). The reward is that model's own output, read at
the rightmost token that is not the pad token, so the exported model (`AutoModelForSequenceClassification`,
export.py) gives the same rewards with plain transformers. collate.py pads on the right with the tokenizer's
pad id, so that is the last real token of the row, and padding does not change a row's reward; for a
tokenizer whose pad token is its EOS (models.load_tokenizer sets pad = EOS when a tokenizer has none) it is the
token before the final EOS, in training, export and scoring alike. With LoRA, peft's SEQ_CLS task keeps the
score head fully trainable (modules_to_save) and the export merges the adapter by default.

Batches: the padded pair layout of collate.py, chosen and rejected rows in one forward pass (rows [0:B]
chosen, [B:2B] rejected; k continuations: rows [j*B:(j+1)*B] the j-th best), so the step is ready for ranked
lists of k completions once the data layer reads them.

Metrics (train per optimizer step, every validation set per epoch), each a mean over prompts (pairs):
{split}/loss, {split}/rewards/chosen = r(x, y_w) (the best completion), {split}/rewards/rejected = r(x, y_l)
(the worst), {split}/rewards/margins (r_j - r_l, a mean over the prompt's pairs) and {split}/rewards/accuracy
(the share of the prompt's pairs ranked right: r_j > r_l strictly). A reward model has no LM head, hence no
{split}/logps/* metrics. Score files with it: `lit_align score` (cli/score.py).
"""

from __future__ import annotations

from lit_align.errors import LitAlignError
from lit_align.losses.ranking import bradley_terry_loss, ranked_margins
from lit_align.modeling.models import ModelSpec
from lit_align.modeling.reward_models import sequence_rewards  # noqa: F401 (also the tests' import)
from lit_align.objectives.base import Objective, OptimSpec, Sums


class RewardModel(Objective):
    head = "score"

    def __init__(self, policy: ModelSpec | None = None, optim: OptimSpec | None = None):
        """
        Args:
            policy: the model whose decoder gets the score head (hub name, local path, or builtin:tiny /
                builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
        """
        super().__init__(policy, optim)

    def layout_name(self) -> str:
        # padded rows, k ranked continuations (pairs are rankings of two: data/records.py); its rewards come from
        # the score head (sequence_rewards), not from the layout's log-probs
        return "ranked"

    def configure_model(self) -> None:
        super().configure_model()
        pad = self.model.config.pad_token_id
        if pad != self.tokenizer.pad_token_id:  # transformers reads the score before the first pad id it sees
            raise LitAlignError(f"the reward model's config.pad_token_id ({pad}) is not its tokenizer's pad token id "
                                f"({self.tokenizer.pad_token_id}): the reward would be read at the wrong token")

    def step(self, batch: dict) -> Sums:
        k = batch["num_continuations"]
        if k < 2:
            raise LitAlignError(f"{batch.get('split', 'a set')}: a reward model is trained and evaluated on pairs "
                                "(chosen, rejected); this set has one continuation per record (kind: sft). Give it "
                                "preference records, or `kind: pair`")
        rewards = sequence_rewards(self.model, batch).view(k, -1).T          # (k*B,) continuation-major -> (B, k)
        losses = bradley_terry_loss(rewards)                                 # (B,)
        margins = ranked_margins(rewards.detach())                           # (B, C(k,2)): r_j - r_l, j better
        n = losses.shape[0]
        return {
            "loss": (losses.sum(), n),
            "rewards/chosen": (rewards[:, 0].detach().sum(), n),
            "rewards/rejected": (rewards[:, -1].detach().sum(), n),
            "rewards/margins": (margins.mean(-1).sum(), n),
            "rewards/accuracy": ((margins > 0).float().mean(-1).sum(), n),
        }

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        raise LitAlignError("a reward model does not generate text: score records with `lit_align score --model "
                            "<exported dir or checkpoint> --data FILE --out scores.jsonl`")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_head"] = self.head  # export.py rebuilds the sequence-classification model from it
