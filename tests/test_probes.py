"""Learning-dynamics probes: values equal an independent log-prob computation, training state is untouched,
TensorBoard gets the tags and the custom-scalars layout, the plot script draws them."""

import copy
import glob
import json

import pytest
import torch
from lit_align.layouts import LAYOUTS

PROBES = [
    {"prompt": "Count from 3 to 6.", "chosen": "3, 4, 5, 6.", "rejected": "3, 4, 6, 6.", "other": "A kiwi is green."},
    {"prompt": "What is 2 plus 5?", "chosen": "2 plus 5 is 7.", "rejected": "2 plus 5 is 9.",
     "other": "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12."},
    {"prompt": "What colour is a lemon?", "chosen": "A lemon is yellow.", "rejected": "A lemon is blue."},  # no "other"
]


def _independent_logp(model, tokenizer, prompt: str, response: str) -> tuple[float, int]:
    """log p(response + EOS | chat-rendered prompt) by a plain forward + log_softmax on one sequence."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    ctx = tokenizer(text, add_special_tokens=False)["input_ids"]
    cont = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)   # (T, V)
    total = sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont))
    return total, len(cont)


def _expected(model, tokenizer, category: str) -> tuple[float, float]:
    vals = [_independent_logp(model, tokenizer, r["prompt"], r[category]) for r in PROBES if category in r]
    return sum(v for v, _ in vals) / len(vals), sum(v / n for v, n in vals) / len(vals)


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """A 3-step SFT fit of builtin:tiny with probes every step (greedy answers on), and the starting model."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_align.callbacks import Probes
    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import SFT
    from lit_align.objectives.base import OptimSpec

    tmp = tmp_path_factory.mktemp("probes")
    path = tmp / "probes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROBES))
    torch.manual_seed(0)
    objective = SFT(ModelSpec("builtin:tiny"), OptimSpec(lr=1e-2))
    objective.configure_model()
    start_model = copy.deepcopy(objective.model).eval()
    data = AlignDataModule(train={"path": "builtin:sft", "limit": 24}, batch_size=8, max_length=64)
    data.connect(objective.tokenizer, objective.layout)
    probes = Probes(sets={"toy": str(path)}, every_n_steps=1, batch_size=4, greedy=2, max_new_tokens=5)
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=TensorBoardLogger(tmp, name="run"), callbacks=[probes],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(objective, datamodule=data)
    return objective, start_model, probes, trainer, tmp


def test_probe_values_equal_an_independent_computation(probed_run):
    objective, start_model, probes, trainer, _ = probed_run
    assert sorted(probes.history) == [0, 1, 2, 3]
    for step, model in ((0, start_model), (3, objective.model.eval())):
        logged = probes.history[step]
        for cat in ("chosen", "rejected", "other"):
            seq, tok = _expected(model, objective.tokenizer, cat)
            assert logged[f"probe/toy/{cat}"] == pytest.approx(seq, rel=1e-5, abs=1e-4), (step, cat)
            assert logged[f"probe_token/toy/{cat}"] == pytest.approx(tok, rel=1e-5, abs=1e-4), (step, cat)
        assert "probe/toy/greedy" in logged
    # training moved the model, and the probes saw it
    assert probes.history[3]["probe/toy/chosen"] != probes.history[0]["probe/toy/chosen"]


def test_probing_leaves_training_state_untouched(probed_run):
    objective, _, probes, trainer, _ = probed_run
    model = objective.model
    model.train()
    model.model.layers[0].eval()                      # a mixed state must come back exactly as it was
    modes = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    probes.compute(trainer, objective)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_event_file_has_probe_tags_and_layout(probed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    *_, tmp = probed_run
    ea = EventAccumulator(glob.glob(str(tmp / "run" / "version_0" / "events.out.tfevents.*"))[0])
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for cat in ("chosen", "rejected", "other", "greedy"):
        assert {f"probe/toy/{cat}", f"probe_token/toy/{cat}"} <= tags
        assert [e.step for e in ea.Scalars(f"probe/toy/{cat}")] == [0, 1, 2, 3]
    assert {"probe_cost/seconds", "probe_cost/fraction"} <= tags
    layout = layout_pb2.Layout()
    layout.ParseFromString(ea.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    per_seq = charts["toy: log p(response | prompt), per sequence"]
    assert per_seq == ["^probe/toy/chosen$", "^probe/toy/rejected$", "^probe/toy/other$", "^probe/toy/greedy$"]


def test_categories_select_and_rename(tmp_path):
    from lit_align.callbacks import Probes
    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import builtin_tokenizer

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROBES))
    probes = Probes(sets={"toy": str(path)}, categories={"preferred": "chosen", "unrelated": "other"})

    class _Trainer:
        datamodule = AlignDataModule(max_length=64)

    class _Module:
        tokenizer = builtin_tokenizer()

    (ps,) = probes.build(_Trainer(), _Module())
    assert ps.categories == ["preferred", "unrelated"]
    assert sorted(c for c, _ in ps.rows) == [0, 0, 0, 1, 1]      # the third record has no "other"
    assert ps.summary.kept == 3


def test_plot_probes_draws_a_grid(probed_run, tmp_path):
    pytest.importorskip("matplotlib")
    from lit_align.plots import plot_probes, read_scalars

    *_, tmp = probed_run
    scalars = read_scalars(tmp / "run")
    assert [s for s, _ in scalars["probe/toy/chosen"]] == [0, 1, 2, 3]
    out = plot_probes({"sft": tmp / "run", "again": tmp / "run"}, tmp_path / "grid.png")
    assert out.stat().st_size > 10_000


def test_probes_under_fsdp2_on_two_processes_equal_one_process(tmp_path, monkeypatch):
    """Sharded over 2 ranks (FSDP2: every rank must join every forward, so the shorter shard is padded) and
    all-reduced, the probes give the single-process numbers; a set with fewer rows than ranks, and greedy
    answers (generate with synced ranks), included."""
    from conftest import REPO, run_cli
    from test_resume import ONE_THREAD, run_in_process, scalars

    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PROBES))
    (tmp_path / "one.jsonl").write_text(json.dumps(PROBES[0]) + "\n")
    (tmp_path / "probes.yaml").write_text((
        "trainer:\n  callbacks:\n    - class_path: lit_align.callbacks.Probes\n      init_args:\n"
        f"        sets: {{toy: {tmp_path / 'toy.jsonl'}, one: {tmp_path / 'one.jsonl'}}}\n"
        "        every_n_steps: 2\n        batch_size: 2\n        greedy: 2\n        max_new_tokens: 4\n"))
    common = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--config", str(tmp_path / "probes.yaml"),
              "--model.init_args.policy.name", "builtin:tiny", "--model.init_args.optim.warmup_steps", "1",
              "--data.init_args.train.limit", "32", "--data.init_args.val.val.limit", "8",
              "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.accelerator", "cpu",
              "--trainer.enable_model_summary", "false", "--export.enabled", "false"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_in_process(["fit", *common, "--data.init_args.batch_size", "8", "--trainer.logger.init_args.name", "one"],
                       tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(before)
    out = run_cli(["fit", *common, "--config", str(REPO / "configs" / "strategies" / "fsdp2.yaml"),
                   "--trainer.devices", "2", "--data.init_args.batch_size", "4",
                   "--trainer.logger.init_args.name", "fsdp2"], cwd=tmp_path, env=ONE_THREAD, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "probes:" in out.stdout + out.stderr                      # the cost line at the end of fit
    one, two = tmp_path / "logs" / "one" / "version_0", tmp_path / "logs" / "fsdp2" / "version_0"
    for prefix in ("probe", "probe_token"):
        for tag in [f"toy/{c}" for c in ("chosen", "rejected", "other", "greedy")] + ["one/chosen", "one/greedy"]:
            a, b = scalars(one, f"{prefix}/{tag}"), scalars(two, f"{prefix}/{tag}")
            assert sorted(a) == sorted(b) == [0, 2, 4], (tag, a, b)
            for step in (0, 2, 4) if not tag.endswith("greedy") else (0,):  # greedy: identical weights only
                assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-4), (prefix, tag, step)


def test_steered_probes_equal_a_steered_independent_computation(tmp_path):
    """Probes(steering=...) probe the policy with a CAA vector applied after each prompt: the logged value at step 0
    equals log p(response | prompt) computed by hand under the same vector, and differs from the unsteered one."""
    from lightning.pytorch import Trainer

    from lit_align.callbacks import Probes
    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import SFT
    from lit_align.objectives.base import OptimSpec
    from lit_align.steering.vectors import extract_from_data

    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROBES))
    objective = SFT(ModelSpec("builtin:tiny"), OptimSpec(lr=1e-2))
    objective.configure_model()
    start_model = copy.deepcopy(objective.model).eval()
    pairs = AlignDataModule(train={"path": "builtin:organism", "limit": 8}, max_length=128)
    pairs.connect(objective.tokenizer, LAYOUTS["pair"])
    pairs.setup("fit")
    vector = extract_from_data(start_model, pairs, "train")
    file = vector.save(tmp_path / "v.safetensors")
    data = AlignDataModule(train={"path": "builtin:sft", "limit": 8}, batch_size=8, max_length=64)
    data.connect(objective.tokenizer, objective.layout)
    probes = Probes(sets={"toy": str(path)}, every_n_steps=1, batch_size=4, greedy=1, max_new_tokens=4,
                    steering={"vector": str(file), "multiplier": 300.0, "layers": [1]})
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, callbacks=[probes], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0)
    trainer.fit(objective, datamodule=data)
    tok = objective.tokenizer
    plain, _ = _expected(start_model, tok, "chosen")
    steered = []
    for r in PROBES:
        text = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                       tokenize=False)
        with vector.apply(start_model, 300.0, layers=[1], prompt_lengths=len(tok(text, add_special_tokens=False)
                                                                              ["input_ids"])):
            steered.append(_independent_logp(start_model, tok, r["prompt"], r["chosen"])[0])
    logged = probes.history[0]["probe/toy/chosen"]
    assert logged == pytest.approx(sum(steered) / len(steered), abs=1e-4)
    assert abs(logged - plain) > 0.01
    assert not any(b._forward_hooks for b in objective.model.model.layers)   # hooks gone after probing
