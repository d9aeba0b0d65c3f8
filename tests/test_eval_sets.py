"""Named evaluation sets (in-distribution vs out-of-distribution): a set read as pairs (`kind: pair`) gives
every objective the policy's pair metrics (logps/margins, logps/accuracy = behaviour-match rate on A/B
sets), including an objective that trains on one continuation (SFT)."""

import pytest
import torch
from conftest import SHARED_DATA, requires_shared

from lit_align.errors import LitAlignError


def _setup(objective, **data_kwargs):
    from lit_align.data import AlignDataModule

    objective.configure_model()
    data = AlignDataModule(**data_kwargs)
    data.connect(objective.tokenizer, objective.layout)
    data.setup("fit")
    return data


def _sft():
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import SFT

    torch.manual_seed(0)
    return SFT(ModelSpec("builtin:tiny"))


def test_sft_on_a_pair_set_gets_pair_metrics_and_its_own_on_the_chosen_answer():
    from lit_align.modeling.logprobs import forward_logps, shared_prompt_logps

    sft = _sft()
    data = _setup(sft, train={"path": "builtin:ab", "limit": 16}, batch_size=4, eval_batch_size=6, val={
        "id": {"path": "builtin:ab", "split": "id", "limit": 6, "kind": "pair"},
        "ood_sft": {"path": "builtin:ab", "split": "ood", "limit": 6}})
    assert {name: layout.name for name, layout in data.split_layouts.items()} == {
        "train": "sft", "val_id": "pair", "val_ood_sft": "sft"}
    assert next(iter(data.train_dataloader()))["num_continuations"] == 1
    pairs, singles = (next(iter(dl)) for dl in data.val_dataloader())
    assert (pairs["split"], pairs["num_continuations"], singles["num_continuations"]) == ("val_id", 2, 1)

    sft.eval()
    embedded = []   # token positions through the embedding: what the evaluation costs
    hook = sft.model.get_input_embeddings().register_forward_hook(lambda m, a, out: embedded.append(a[0].numel()))
    with torch.no_grad():
        sums = {k: (s / c).item() for k, (s, c) in sft.eval_sums(pairs).items()}
        cost, embedded[:] = sum(embedded), []
        shared_prompt_logps(sft.model, pairs)
        hook.remove()
        # one forward pass over both answers, each prompt once: SFT's own metrics come from the same pass
        assert cost == sum(embedded) < 0.75 * pairs["input_ids"].numel()
        seq = forward_logps(sft.model, pairs).sequence.view(2, -1).T          # (B, 2): matching, not matching
        own = {k: (s / c).item() for k, (s, c) in sft.step(
            {**pairs, **{k: pairs[k][:6] for k in ("input_ids", "attention_mask", "labels")},
             "num_continuations": 1}).items()}
    assert sums["logps/accuracy"] == pytest.approx((seq[:, 0] > seq[:, 1]).float().mean().item())
    assert sums["logps/margins"] == pytest.approx((seq[:, 0] - seq[:, 1]).mean().item(), abs=1e-5)
    assert sums["logps/chosen"] == pytest.approx(seq[:, 0].mean().item(), abs=1e-5)
    for name in ("loss", "token_accuracy", "logps"):        # SFT's own metrics: on the matching answer only
        assert sums[name] == pytest.approx(own[name], abs=1e-5)
    # a set read as SFT has no pair metrics
    assert "logps/accuracy" not in sft.eval_sums(singles)


def test_evaluation_by_length_runs_longest_first_and_sums_as_in_file_order():
    """eval_loader(by_length=True), as CAA's grids and steered evaluation read the sets: batches longest first (a
    batch pads to its longest row, and padding costs as much as a real token); every item is seen once, keeps its
    index, and the sums are those of file order. Validation keeps file order (the reference cache's batches)."""
    sft = _sft()
    data = _setup(sft, train={"path": "builtin:ab", "limit": 8}, eval_batch_size=4,
                  val={"id": {"path": "builtin:pairs", "limit": 12, "kind": "pair"}})
    file_order, by_length = list(data.eval_loader("val_id")), list(data.eval_loader("val_id", by_length=True))
    assert [int(i) for b in data.val_dataloader()[0] for i in b["index"]] == list(range(12))
    lengths = {i: sum(len(c) for c in ex.continuations[:1]) + len(ex.context)
               for i, ex in enumerate(data.splits["val_id"].examples)}
    seen = [int(i) for b in by_length for i in b["index"]]
    assert sorted(seen) == list(range(12)) and seen != list(range(12)) and seen == data.length_order("val_id")
    widths = [[lengths[int(i)] for i in b["index"]] for b in by_length]
    assert all(max(later) <= min(earlier) for earlier, later in zip(widths, widths[1:]))
    assert sum(b["input_ids"].numel() for b in by_length) < sum(b["input_ids"].numel() for b in file_order)

    sft.eval()
    with torch.no_grad():
        totals = [{k: sum(sft.eval_sums(b)[k][0].item() for b in batches) for k in ("logps/margins", "loss")}
                  for batches in (file_order, by_length)]     # (summed over items: the sums Lightning reduces)
    assert totals[0] == pytest.approx(totals[1], abs=1e-4)


def test_kind_is_for_evaluation_sets_only():
    with pytest.raises(LitAlignError, match="evaluation sets only"):
        _setup(_sft(), train={"path": "builtin:ab", "limit": 8, "kind": "pair"})
    with pytest.raises(LitAlignError, match="kind must be sft or pair"):
        _setup(_sft(), train={"path": "builtin:ab", "limit": 8},
               val={"x": {"path": "builtin:ab", "split": "id", "limit": 4, "kind": "probe"}})


def test_dpo_gets_the_same_match_rate_metric():
    objectives = pytest.importorskip("lit_align.objectives")
    if not hasattr(objectives, "DPO"):
        pytest.skip("DPO is not in this tree")
    from lit_align.modeling.logprobs import forward_logps
    from lit_align.modeling.models import ModelSpec

    torch.manual_seed(0)
    dpo = objectives.DPO(ModelSpec("builtin:tiny"))
    data = _setup(dpo, train={"path": "builtin:ab", "limit": 8}, eval_batch_size=6,
                  val={"ood": {"path": "builtin:ab", "split": "ood", "limit": 6}})
    batch = next(iter(data.val_dataloader()[0]))
    dpo.eval()
    with torch.no_grad():
        sums = {k: (s / c).item() for k, (s, c) in dpo.eval_sums(batch).items()}
        seq = forward_logps(dpo.model, batch).sequence.view(2, -1).T
    assert sums["logps/accuracy"] == pytest.approx((seq[:, 0] > seq[:, 1]).float().mean().item())
    assert sums["logps/margins"] == pytest.approx((seq[:, 0] - seq[:, 1]).mean().item(), abs=1e-5)
    assert "rewards/accuracy" in sums  # DPO's own metrics are kept


@requires_shared
def test_model_written_evals_human_vs_lm_read_as_pairs():
    """configs/examples/eval_sets_mwe.yaml in small: train on lm rows 8.., evaluate on lm rows 0-7 and human rows."""
    human = SHARED_DATA / "model-written-evals" / "human" / "survival-instinct.jsonl"
    lm = SHARED_DATA / "model-written-evals" / "lm" / "survival-instinct.jsonl"
    data = _setup(_sft(), train={"path": str(lm), "skip": 8, "limit": 8}, max_length=384, val={
        "human": {"path": str(human), "limit": 8, "kind": "pair"},
        "lm": {"path": str(lm), "limit": 8, "kind": "pair"}})
    for name in ("val_human", "val_lm"):
        assert data.split_layouts[name].name == "pair" and data.summaries[name].kept == 8
        assert all(len(ex.continuations) == 2 for ex in data.splits[name].examples)
    train_lines = {int(ex.where.rsplit(":", 1)[1]) for ex in data.splits["train"].examples}
    val_lines = {int(ex.where.rsplit(":", 1)[1]) for ex in data.splits["val_lm"].examples}
    assert train_lines == set(range(9, 17)) and val_lines == set(range(1, 9))


def test_skip_then_limit_on_a_builtin_task():
    from lit_align.data.sources import Source, read_rows

    every = [row for _, row in read_rows(Source("builtin:ab", limit=10))]
    assert [row for _, row in read_rows(Source("builtin:ab", skip=4, limit=6))] == every[4:]
