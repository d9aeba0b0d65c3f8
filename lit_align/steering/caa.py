"""CAA as a method beside the training objectives, for sweeps and experiments: from n contrast pairs, extract a
steering vector (steering/vectors.py), choose its layer and multiplier on HELD-OUT training pairs (never on the
evaluation sets), then evaluate the steered model on every evaluation set under the objectives' metric names:

    {split}/ab/p_match       mean σ(log π(m|x) − log π(n|x)) (A/B contrast sets)
    {split}/logps/accuracy   share of items with log π(m|x) > log π(n|x) (the behaviour-match rate)
    {split}/logps/margins    mean log π(m|x) − log π(n|x)
    {split}/logps/chosen     mean log π(m|x) (on a set of preference pairs: the log-prob of held-out answers)
    {split}/gen/<scorer>     generation-scored sets (scorers.py), steered from the first generated token on
    caa/layer, caa/multiplier, caa/select_p_match   what the selection chose, and its held-out score

Selection: the (layer, multiplier) with the highest p_match on the selection pairs; ties go to the smaller
|multiplier|, then the earlier layer. Multiplier 0 (the unsteered model) is always a candidate, so CAA never
scores below its starting model on the selection pairs. The same procedure runs on top of a fine-tuned policy
("CAA on SFT": a sweep objective's `then_caa`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from lit_align.errors import LitAlignError
from lit_align.steering.vectors import (METHODS, POSITIONS, READS, contrast_margins, contrast_margins_grid,
                                        extract_from_data, match_rate, p_match, pair_logps)

SELECT_SPLIT = "caa_select"


@dataclass
class CAAOptions:
    """The `steer:` section of a sweep (CAA runs and `then_caa`), typed for jsonargparse (the sweep file's parser
    checks it when the file is read: lit_align/sweep/engine.py)."""

    layers: list[int] | str = "all"
    multipliers: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    select: dict | str | None = None
    """The held-out training pairs the layer and multiplier are chosen on (a data source, e.g.
    {path: builtin:organism, skip: 1024, limit: 64}: rows of the train split no run trains on)."""
    positions: Literal[POSITIONS] = "after_prompt"
    method: Literal[METHODS] = "mean_diff"
    read: Literal[READS] = "answer"

    def validate(self) -> "CAAOptions":
        """What the types cannot say; raises in one sentence."""
        if self.select is None:
            raise LitAlignError("steer.select: give the held-out training pairs to choose the layer and multiplier on")
        if isinstance(self.layers, str) and self.layers != "all":
            raise LitAlignError(f"steer.layers must be a list of block indices or all, not '{self.layers}'")
        return self


def caa_metrics(model: torch.nn.Module, datamodule, opts: CAAOptions, generate_sets: dict | None = None,
                max_new_tokens: int = 16) -> dict[str, float]:
    """Extract from the data module's `train` split, select on its `val_caa_select` split, evaluate every other
    evaluation split (and `generate_sets`: {name: (data source, scorers)}, see generation_metrics). The data
    module is connected with layout "pair" and set up, its val sets including SELECT_SPLIT."""
    select = datamodule.log_prefix("val", SELECT_SPLIT)
    vector = extract_from_data(model, datamodule, "train", layers=opts.layers, read=opts.read, method=opts.method)
    candidates = [(0.0, vector.layers[0])] + [(m, layer) for layer in vector.layers for m in opts.multipliers if m != 0]
    vector.check(model, "weights")
    if opts.positions == "after_prompt":  # the whole grid from one prompt pass per item (vectors.contrast_margins_grid)
        grid = contrast_margins_grid(model, datamodule.eval_loader(select, by_length=True), vector.directions,
                                     sorted({m for m, _ in candidates}))
        margins = {(m, layer): grid[(layer, m)] for m, layer in candidates}
    else:
        margins = {}
        for m, layer in candidates:
            with vector.apply(model, m, layers=[layer], positions=opts.positions) as steer:
                margins[(m, layer)] = contrast_margins(model, datamodule.eval_loader(select, by_length=True), steer)
    scored = [(p_match(margins[(m, layer)]), -abs(m), -layer, m, layer) for m, layer in candidates]
    best = max(scored)
    _, _, _, multiplier, layer = best
    metrics = {"caa/layer": float(layer), "caa/multiplier": float(multiplier), "caa/select_p_match": best[0]}
    with vector.apply(model, multiplier, layers=[layer], positions=opts.positions) as steer:
        metrics.update(pair_set_metrics(model, datamodule, steer, skip=(select,)))
        metrics.update(generation_metrics(model, datamodule, generate_sets, max_new_tokens, steer))
    return metrics


def pair_set_metrics(model: torch.nn.Module, datamodule, steering=None, skip: tuple = ()) -> dict[str, float]:
    """logps/accuracy, logps/margins, logps/chosen (and ab/p_match on contrast sets) of every evaluation split but `skip`,
    under the objectives' names, optionally steered."""
    metrics = {}
    for split in datamodule.splits:
        if not split.startswith("val") or split in skip:
            continue
        logps = pair_logps(model, datamodule.eval_loader(split, by_length=True), steering)   # (n, 2)
        margins = logps[:, 0] - logps[:, 1]
        metrics[f"{split}/logps/chosen"] = float(logps[:, 0].mean())   # (as the objectives log it: a capability probe)
        metrics[f"{split}/logps/accuracy"] = match_rate(margins)
        metrics[f"{split}/logps/margins"] = float(margins.mean())
        if datamodule.summaries[split].contrast:
            metrics[f"{split}/ab/p_match"] = p_match(margins)
    return metrics


def generation_metrics(model: torch.nn.Module, datamodule, generate_sets: dict | None, max_new_tokens: int = 16,
                       steering=None) -> dict[str, float]:
    """{split}/gen/<label> of each generation-scored set {name: (data source, scorers)}, optionally steered: the
    prompts read and rendered as the data module renders them (data/prompts.py), greedy answers, scored by
    scorers.py (`scorers`: a name such as `match`, a {name, ...options} mapping, or a list of them)."""
    from lit_align.data.prompts import read_prompts
    from lit_align.data.sources import as_source
    from lit_align.data.tokenize import Tokenizer
    from lit_align.modeling.generation import generate_texts
    from lit_align.eval.scorers import build_scorers, mean_scores

    tokenizer = Tokenizer(datamodule.tokenizer, datamodule.spec)
    metrics = {}
    for name, (source, scorers) in (generate_sets or {}).items():
        scorers = build_scorers(scorers)
        records = read_prompts(name, as_source(source), tokenizer)
        texts = generate_texts(model, datamodule.tokenizer, records, tokenizer.end_id, max_new_tokens, steering=steering)
        for label, value in mean_scores(scorers, [r.record for r in records], texts).items():
            metrics[f"{datamodule.log_prefix('val', name)}/gen/{label}"] = value
    return metrics
