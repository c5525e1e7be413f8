"""labkit.scale: the training script of lesson 16 on one process and several (torchrun / accelerate
launch, gloo on CPUs), its config checks and the loss normalisation (per-GPU memory: tests/test_memory.py)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labkit import launcher, scale, train

ROOT = Path(__file__).resolve().parents[1]
# small and quick: the two task families with short prompts, short sequences, a few steps
QUICK = {"tasks": ["dti", "risk"], "max_length": 96, "global_batch": 8, "steps": 4}
# 2 processes vs 1 with the same global batch and token normalisation: equal up to float rounding
# (measured: at most 5e-7 over 8 steps); the naive mean of micro-batch means differs by ~1e-2 and more.
LOSS_TOLERANCE = 1e-5


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """The three runs of QUICK that several tests read, launched once per test session: 1 process x micro-batch 8
    ("one"), 1 process x 4 with 2 accumulation steps ("accum"), torchrun with 2 processes x 4 ("two"). pytest-xdist's
    workers share them through a file lock in the folder that holds every worker's temporary folders."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, plan = shared / "scale_quick_runs", {"one": (1, 8), "accum": (1, 4), "two": (2, 4)}
    with FileLock(str(folder) + ".lock"):
        if not (folder / "runs.json").is_file():
            runs = {name: launcher.run(n, {**QUICK, "micro_batch": micro}, workdir=folder / name)
                    for name, (n, micro) in plan.items()}
            (folder / "runs.tmp").write_text(json.dumps(runs))
            (folder / "runs.tmp").replace(folder / "runs.json")
    return json.loads((folder / "runs.json").read_text())


# ----------------------------------------------------------------------------- config checks (no training)

def test_shipped_config_is_the_default():
    assert scale.load_config(scale.DEFAULT_CONFIG) == scale.TrainConfig()
    cfg = scale.TrainConfig()
    assert cfg.model == "bundled" and "/" not in cfg.model and cfg.data == "instructions_train.jsonl"


def test_yaml_config_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 7\nlr: 1e-3\nlora_alpha: 8\ntasks: [dti]\n")  # PyYAML reads 1e-3 as text, 8 as an int
    cfg = scale.load_config(p, {"micro_batch": 4, "model": "bundled", "tasks": ["risk"]})
    assert (cfg.steps, cfg.lr, cfg.lora_alpha, cfg.micro_batch, cfg.tasks) == (7, 1e-3, 8.0, 4, ["risk"])
    assert isinstance(cfg.lr, float) and isinstance(cfg.lora_alpha, float)


@pytest.mark.parametrize("overrides, message", [
    ({"lora_r": 0}, "r must be a positive integer"),
    ({"lr": -1e-3}, "lr must be a positive number"),
    ({"lr": 0}, "lr must be a positive number"),
    ({"model": "/no/such/model"}, "does not exist"),
    ({"lr_rate": 1e-3}, "unknown key 'lr_rate'"),
    ({"stpes": 10}, "Did you mean 'steps'"),
    ({"steps": 1.5}, "steps must be int, got 1.5"),
    ({"steps": True}, "steps must be int, got True"),
    ({"lr": "fast"}, "lr must be float, got 'fast'"),
    ({"completion_only": "yes"}, "completion_only must be bool"),
    ({"tasks": "dti"}, "tasks must be a list of strings"),
    ({"global_batch": 8, "micro_batch": 3}, "not a multiple of micro_batch=3"),
    ({"tasks": ["dtii"]}, "unknown task 'dtii'"),
    ({"loss_normalisation": "sum"}, "loss_normalisation must be one of"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"data": "nope.jsonl"}, "data file 'nope.jsonl' not found"),
])
def test_bad_config_values_are_clear_errors(overrides, message):
    with pytest.raises(scale.ConfigError, match=re.escape(message)):
        scale.load_config(scale.DEFAULT_CONFIG, overrides)


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(scale.ConfigError, match="does not exist"):
        scale.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [3\n")
    with pytest.raises(scale.ConfigError, match="not a valid YAML file"):
        scale.load_config(bad)
    bad.write_text("- steps\n- 3\n")
    with pytest.raises(scale.ConfigError, match="key: value"):
        scale.load_config(bad)
    bad.write_text("stpes: 3\n")
    with pytest.raises(scale.ConfigError, match=re.escape(f"{bad}: unknown key 'stpes'. Did you mean 'steps'?")):
        scale.load_config(bad)


def test_global_batch_must_split_over_processes():
    assert scale.accumulation_steps(8, 1, 8) == 1
    assert scale.accumulation_steps(8, 1, 4) == 2
    assert scale.accumulation_steps(8, 2, 4) == 1
    assert scale.accumulation_steps(64, 8, 2) == 4
    with pytest.raises(scale.ConfigError, match=r"not divisible by world_size x micro_batch = 2 x 8 = 16.*\[1, 2, 4\]"):
        scale.accumulation_steps(8, 2, 8)
    with pytest.raises(scale.ConfigError, match="multiple of 3"):
        scale.accumulation_steps(8, 3, 1)


# ----------------------------------------------------------------------------- batches and the loss normalisation

def _global_batch(tok, n=8, seed=0):
    from labkit import sft

    cfg = scale.TrainConfig(**{k: v for k, v in QUICK.items() if k != "steps"})
    feats = sft.tokenize_all(tok, scale.load_pairs(cfg, tok), cfg.max_length)
    return next(sft.batches(feats, n, tok.pad_token_id, seed))


def test_micro_batches_partition_the_global_batch(base):
    import torch

    _, tok = base
    batch = _global_batch(tok)
    for world, accum in ((1, 1), (1, 2), (2, 1), (2, 2), (4, 2)):
        parts = [b for r in range(world) for b in scale.micro_batches(batch, world, r, accum)]
        assert len(parts) == world * accum
        assert sum(scale.supervised_tokens(b["labels"]) for b in parts) == scale.supervised_tokens(batch["labels"])
        for b, start in zip(parts, range(0, 8, 8 // (world * accum))):  # rows in order, padding-only columns dropped
            width = b["input_ids"].shape[1]
            assert torch.equal(b["input_ids"], batch["input_ids"][start:start + len(b["input_ids"]), :width])
            assert b["attention_mask"][:, -1].any()
    with pytest.raises(ValueError):
        scale.micro_batches(batch, 3, 0, 1)


def test_supervised_tokens_counts_shifted_labels():
    import torch

    labels = torch.tensor([[5, 6, -100, 7], [-100, -100, 8, 9]])
    assert scale.supervised_tokens(labels) == 2 + 2  # the first position is never a target


def test_token_normalisation_gives_the_one_batch_gradient(base):
    """Micro-batch losses summed over tokens and divided by the GLOBAL token count add up to the whole
    batch's loss and gradient; the mean of the micro-batch means (the naive recipe) does not."""
    import copy

    import torch

    from labkit import adapters

    model, tok = base
    pm = adapters.add(copy.deepcopy(model), "lora", r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # B = 0 at init; make the adapter matter so its gradients are informative
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    pm.train()
    batch = _global_batch(tok)
    parts = scale.micro_batches(batch, 2, 0, 2) + scale.micro_batches(batch, 2, 1, 2)
    counts = [scale.supervised_tokens(b["labels"]) for b in parts]
    assert len(set(counts)) > 1, "the test needs micro-batches with different numbers of trained tokens"

    def grads(loss_fn):
        pm.zero_grad(set_to_none=True)
        value = loss_fn()
        value.backward()
        return value.item(), torch.cat([p.grad.flatten() for p in pm.parameters() if p.requires_grad])

    whole, g_whole = grads(lambda: pm(**batch).loss)
    total = torch.tensor(float(sum(counts)))
    tokens, g_tokens = grads(lambda: sum(pm(**b, num_items_in_batch=total).loss for b in parts))
    naive, g_naive = grads(lambda: sum(pm(**b).loss for b in parts) / len(parts))
    def rel(g):
        return ((g - g_whole).norm() / g_whole.norm()).item()

    assert abs(tokens - whole) < 1e-5 and rel(g_tokens) < 1e-5
    assert abs(naive - whole) > 1e-4 and rel(g_naive) > 1e-3, (naive - whole, rel(g_naive))  # 0.5% here
    check = scale.normalisation_check(pm, batch, world_size=2, accum_steps=2)  # what lesson 16 shows
    assert check["tokens"] == counts and check["whole"] == pytest.approx(whole, abs=1e-6)
    assert check["grad_diff_tokens"] < 1e-5 < 1e-3 < check["grad_diff_naive"]


# ----------------------------------------------------------------------------- other models: their own targets, pad == eos

def test_lora_targets_are_the_models_own_unless_the_config_names_them(base, hub_models):
    """The shipped config names no targets: the bundled Llama gets its seven projections (as before),
    GPT-2 its Conv1D layers; named targets are checked against the model's layers."""
    from labkit import adapters, models

    assert scale.TrainConfig().target_modules == [] and "\ntarget_modules" not in scale.DEFAULT_CONFIG.read_text()
    model, _ = base
    assert scale.lora_targets(scale.TrainConfig(), model) == list(adapters.DEFAULT_TARGETS)
    gpt2, _ = models.load_base(hub_models["gpt2"], device="cpu")
    assert scale.lora_targets(scale.TrainConfig(), gpt2) == ["c_attn", "c_proj", "c_fc"]
    assert scale.lora_targets(scale.TrainConfig(target_modules=["c_attn"]), gpt2) == ["c_attn"]
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no Linear \(or Conv1D\) layer of GPT2LMHeadModel"):
        scale.lora_targets(scale.TrainConfig(target_modules=["q_proj"]), gpt2)


def test_uneven_batch_skips_batches_whose_micro_batches_split_evenly():
    import torch

    def feat(n_trained):  # one example: 2 prompt tokens, then N_TRAINED trained ones
        ids = list(range(1, 3 + n_trained))
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100, -100] + ids[2:]}

    even = [feat(3)] * 8
    with pytest.raises(ValueError, match="first 5 global batches"):
        scale.uneven_batch(even, 4, 0, max_batches=5)
    mixed = even[:4] + [feat(1)] * 4
    batch, skipped = scale.uneven_batch(mixed, 4, 0, seed=0)
    counts = [scale.supervised_tokens(b["labels"]) for r in (0, 1) for b in scale.micro_batches(batch, 2, r, 1)]
    assert len(set(counts)) == 2 and isinstance(batch["input_ids"], torch.Tensor)
    # the batches it skipped are the even ones before the first uneven one, worked out from the order alone
    from labkit.train import epoch_order

    order = epoch_order(len(mixed), 4, 0)
    halves = [[sum(len(mixed[i]["input_ids"]) - 2 for i in rows[h * 2:h * 2 + 2]) for h in (0, 1)]
              for rows in (next(order) for _ in range(20))]
    assert skipped == next(i for i, (a, b) in enumerate(halves) if a != b)
    assert sorted(counts) == sorted(halves[skipped])


def test_most_uneven_step_reads_each_ranks_share_from_the_log():
    """Lesson 16's section 3 reads the trap off a launched run's log: the step with the most unequal
    trained tokens, each rank's task families, the token mean and the naive mean of the ranks' means."""
    log = {"ranks": [{"rank": 0, "tokens": [10, 30, 12], "loss_sums": [20.0, 60.0, 24.0],
                      "families": [["a", "a"], ["dti", "dti"], ["a", "b"]]},
                     {"rank": 1, "tokens": [10, 10, 12], "loss_sums": [10.0, 40.0, 12.0],
                      "families": [["a", "a"], ["risk", "risk"], ["b", "b"]]}]}
    u = scale.most_uneven_step(log)
    assert u["step"] == 2
    assert [r["families"] for r in u["ranks"]] == [{"dti": 2}, {"risk": 2}]
    assert [r["mean"] for r in u["ranks"]] == [2.0, 4.0]
    assert u["token_mean"] == pytest.approx(100 / 40) and u["naive_mean"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="2 or more processes"):
        scale.most_uneven_step({"ranks": log["ranks"][:1]})


def test_auto_device_of_a_group_is_cuda_only_with_a_gpu_for_every_process(monkeypatch):
    import torch

    from labkit import env

    monkeypatch.setattr(env, "pick_device", lambda device: "cpu" if device == "cpu" else "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert scale.process_device("auto") == "cpu"  # two processes cannot share the one GPU
    assert scale.process_device("cuda") == "cuda"  # asked for explicitly: the user's choice stands
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert scale.process_device("auto") == "cuda"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert scale.process_device("auto") == "cuda"
    monkeypatch.setattr(env, "pick_device", lambda device: "mps")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert scale.process_device("auto") == "cpu"  # several processes on Apple MPS are not supported


def test_gradient_checkpointing_is_on_when_asked_and_changes_no_loss(tmp_path):
    """The memory table of lesson 16 assumes gradient checkpointing for 7B and 70B; the script turns it on
    with gradient_checkpointing: true, and the losses are those of the run without it (it recomputes the
    same activations)."""
    logs = {}
    for on in (False, True):
        cfg = scale.load_config(None, {**QUICK, "steps": 2, "micro_batch": 4, "device": "cpu", "threads": 1,
                                       "log_every": 0, "gradient_checkpointing": on,
                                       "output_dir": str(tmp_path / f"a{on}"), "log_file": str(tmp_path / f"a{on}.json")})
        logs[on] = scale.train(cfg, out=lambda line: None)
    assert logs[True]["gradient_checkpointing"] is True and logs[False]["gradient_checkpointing"] is False
    assert logs[True]["losses"] == pytest.approx(logs[False]["losses"], abs=1e-5)
    assert logs[True]["ranks"][0]["families"][0] == logs[False]["ranks"][0]["families"][0]


def test_token_normalisation_holds_for_each_hub_style_model(hub_model):
    """The equality of section 3 of lesson 16 on each fixture model, GPT-2 among them: its pad token IS
    its eos (load_base sets it), and the eos that ends every completion is still a trained token, never
    mistaken for padding (labels come from the pairs, padding from the attention mask). GPT-2 also has
    dropout (p = 0.1), which normalisation_check keeps out (eval mode): measured in train mode, the
    token-normalised gradient was 38% off the whole batch's, from the masks alone."""
    import torch

    from labkit import adapters, models, sft

    kind, folder = hub_model
    model, tok = models.load_base(folder, device="cpu")
    if kind == "gpt2":
        assert tok.pad_token_id == tok.eos_token_id
    pm = adapters.add(model, "lora", seed=0, r=4, alpha=8).train()  # training mode, as a training loop has it
    with torch.no_grad():  # B = 0 at init; make the adapter matter so its gradients are informative
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    cfg = scale.TrainConfig(model=str(folder), tasks=["dti", "risk"], max_length=160)
    feats = sft.tokenize_all(tok, scale.load_pairs(cfg, tok), cfg.max_length)
    batch, skipped = scale.uneven_batch(feats, 8, tok.pad_token_id, 0, world_size=2, accum_steps=2)
    stream = sft.batches(feats, 8, tok.pad_token_id, 0)
    for _ in range(skipped):  # the batches before it split evenly
        next(stream)
    assert skipped < 10 and torch.equal(batch["input_ids"], next(stream)["input_ids"])
    for row_labels, mask in zip(batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        assert row_labels[n - 1] == tok.eos_token_id and (row_labels[n:] == -100).all()
    check = scale.normalisation_check(pm, batch, world_size=2, accum_steps=2)
    assert len(set(check["tokens"])) > 1 and sum(check["tokens"]) == scale.supervised_tokens(batch["labels"])
    assert check["tokens_normalised"] == pytest.approx(check["whole"], abs=1e-5)
    assert check["grad_diff_tokens"] < 1e-5 < 1e-3 < check["grad_diff_naive"], check
    assert pm.training  # the check ran in eval mode and leaves the mode as it found it


def test_the_scripts_runs_turn_the_base_models_dropout_off(hub_models):
    """GPT-2's dropout layers (p = 0.1) are set to 0 so that every layout computes the same function; a
    LoRA dropout asked for in the config is kept."""
    import torch

    from labkit import adapters, models

    gpt2, _ = models.load_base(hub_models["gpt2"], device="cpu")
    pm = adapters.add(gpt2, "lora", r=4, alpha=8, dropout=0.05)
    drops = [n for n, m in pm.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    lora = [n for n in drops if "lora_dropout" in n]
    assert len(lora) == 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj in 2 blocks
    assert train.disable_dropout(pm, keep="lora_dropout") == len(drops) - len(lora) == 1 + 3 * 2  # embd; attn, resid, mlp
    assert {m.p for n, m in pm.named_modules() if isinstance(m, torch.nn.Dropout)} == {0.0, 0.05}
    assert train.disable_dropout(pm, keep="lora_dropout") == 0
    assert train.disable_dropout(pm) == len(lora), "without KEEP, LoRA's dropout goes too (preference and RL training)"


@pytest.mark.slow
def test_two_processes_match_one_process_with_gpt2(tmp_path, hub_models):
    """torchrun with 2 CPU processes (gloo) on GPT-2 (Conv1D LoRA, pad == eos, the config naming no targets)
    trains like 1 process: the same losses, the same adapter on both ranks, on GPT-2's own targets."""
    quick = {**QUICK, "model": str(hub_models["gpt2"]), "steps": 3}
    one = launcher.run(1, {**quick, "micro_batch": 8}, workdir=tmp_path / "one")
    two = launcher.run(2, {**quick, "micro_batch": 4}, workdir=tmp_path / "two")
    assert one["target_modules"] == two["target_modules"] == ["c_attn", "c_proj", "c_fc"]
    assert two["world_size"] == 2 and two["backend"] == "gloo" and two["tokens"] == one["tokens"]
    assert two["ranks"][0]["adapter_sha256"] == two["ranks"][1]["adapter_sha256"]
    assert max(abs(a - b) for a, b in zip(two["losses"], one["losses"])) < LOSS_TOLERANCE


# ----------------------------------------------------------------------------- real runs: 1 process and 2 (gloo)

@pytest.mark.slow
def test_two_processes_match_one_process_and_accumulation(quick_runs):
    """torchrun with 2 CPU processes (gloo) x micro-batch 4 == 1 process x 8 == 1 process x 4 x 2 accumulation."""
    one, accum, two = quick_runs["one"], quick_runs["accum"], quick_runs["two"]
    assert "torch.distributed.run" in two["command"] and two["world_size"] == 2 and two["backend"] == "gloo"
    assert (one["accum_steps"], accum["accum_steps"], two["accum_steps"]) == (1, 2, 1)
    # the ranks agree: the same logged losses, the same adapter weights, different data
    r0, r1 = two["ranks"]
    assert r0["adapter_sha256"] == r1["adapter_sha256"]
    assert r0["tokens"] != r1["tokens"] and [a + b for a, b in zip(r0["tokens"], r1["tokens"])] == two["tokens"]
    assert two["tokens"] == one["tokens"] == accum["tokens"]
    # each rank logs the task family of each of its examples: together, the global batch of that step
    from labkit import models
    from labkit.train import epoch_order

    tok = models.load_tokenizer("bundled")
    families = [p["task"] for p in scale.load_pairs(scale.load_config(None, QUICK), tok)]
    order = epoch_order(len(families), 8, 0)
    for step in range(QUICK["steps"]):
        assert r0["families"][step] + r1["families"][step] == [families[i] for i in next(order)]
    assert one["ranks"][0]["families"] == [a + b for a, b in zip(r0["families"], r1["families"])]
    for run in (accum, two):
        assert len(run["losses"]) == QUICK["steps"]
        assert max(abs(a - b) for a, b in zip(run["losses"], one["losses"])) < LOSS_TOLERANCE
    # 2 processes x 1 and 1 process x 2 accumulation run the same micro-batches: the same adapter, bit for bit
    assert accum["ranks"][0]["adapter_sha256"] == r0["adapter_sha256"]
    # rank 0 saved the adapter atomically: a loadable folder, no temporary folder left beside it
    from labkit import adapters, models

    saved = Path(two["workdir"]) / "adapter"
    assert (saved / "adapter_config.json").is_file()
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]
    adapters.load(models.load_base(device="cpu")[0], saved)


@pytest.mark.slow
def test_one_process_reproduces_labkit_sft_train(quick_runs):
    """The script is the course's recipe, not a copy of it: on one process with micro-batch = global
    batch it follows labkit.sft.train's loss curve (same batches, same LoRA init, same AdamW and clipping)."""
    from labkit import adapters, env, models, sft

    cfg = scale.load_config(None, {**QUICK, "micro_batch": 8})
    env.seed_everything(cfg.seed)
    model, tok = models.load_base(cfg.model, device="cpu")
    pm = adapters.add(model, "lora", seed=cfg.seed, r=cfg.lora_r, alpha=cfg.lora_alpha,
                      target_modules=scale.lora_targets(cfg, model))
    losses = sft.train(pm, tok, scale.load_pairs(cfg, tok), steps=cfg.steps, lr=cfg.lr, batch_size=cfg.global_batch,
                       max_length=cfg.max_length, seed=cfg.seed, progress=False)
    ours = quick_runs["one"]["losses"]
    assert len(ours) == len(losses) == QUICK["steps"]
    assert max(abs(a - b) for a, b in zip(ours, losses)) < LOSS_TOLERANCE


@pytest.mark.slow
def test_naive_mean_differs_and_the_script_runs_under_accelerate_launch(tmp_path, quick_runs):
    """accelerate launch with the shipped DDP config (torchrun underneath, gloo on CPUs); with the naive
    mean of micro-batch means the loss is no longer the one-process loss (nor torchrun's token mean)."""
    tokens = quick_runs["two"]
    naive = launcher.run(2, {**QUICK, "micro_batch": 4, "loss_normalisation": "mean"}, launcher="accelerate",
                         workdir=tmp_path)
    assert "accelerate.commands.launch" in naive["command"] and naive["distributed_type"] == "MULTI_CPU"
    assert naive["world_size"] == 2 and naive["ranks"][0]["adapter_sha256"] == naive["ranks"][1]["adapter_sha256"]
    assert naive["losses"][0] == pytest.approx(tokens["losses"][0], abs=1e-6)  # same weights at step 1
    # measured: 9e-4 after 3 steps, 4e-2 after 4 (the weights drift apart step by step)
    assert max(abs(a - b) for a, b in zip(naive["losses"], tokens["losses"])) > 1e-2


@pytest.mark.slow
def test_bf16_and_4bit_under_ddp_on_cpu(tmp_path):
    """precision = "bf16" and load_in_4bit (NF4 via bitsandbytes) work on CPUs, also with 2 processes."""
    run = launcher.run(2, {**QUICK, "micro_batch": 4, "steps": 2, "precision": "bf16", "load_in_4bit": True},
                    workdir=tmp_path)
    assert run["precision"] == "bf16" and run["load_in_4bit"] and run["world_size"] == 2
    assert run["ranks"][0]["adapter_sha256"] == run["ranks"][1]["adapter_sha256"]
    # step 1 (B = 0: the base model) is the first global batch's loss: the 4-bit bf16 model computes it
    # close to the float32 model (within NF4 and bf16 rounding), not merely some finite number
    from labkit import models, sft

    model, tok = models.load_base(device="cpu")
    cfg = scale.load_config(None, {**QUICK, "micro_batch": 4})
    batch = next(sft.batches(sft.tokenize_all(tok, scale.load_pairs(cfg, tok), cfg.max_length), 8, tok.pad_token_id, 0))
    import torch

    with torch.no_grad():
        fp32 = model(**batch).loss.item()
    assert run["losses"][0] == pytest.approx(fp32, rel=0.05) and run["losses"][0] != fp32


FSDP2_WORKER = textwrap.dedent(f"""
    import json, sys, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_scale import fsdp2_batch, fsdp2_losses, fsdp2_model
    dist.init_process_group("gloo")
    model = fsdp2_model()
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    ids = fsdp2_batch()
    rank, world = dist.get_rank(), dist.get_world_size()

    def global_mean(loss):
        dist.all_reduce(loss)
        return loss.item() / world

    losses = fsdp2_losses(model, ids[rank * 4 // world:(rank + 1) * 4 // world], global_mean)
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    out = {{"losses": losses, "full": list(a.shape), "local": list(a.to_local().shape)}}
    json.dump(out, open(sys.argv[1] + f".{{rank}}", "w"))
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()
""")


def fsdp2_model():
    """The bundled model with a LoRA adapter (r 4 on q_proj and v_proj, the same initialisation in every process)."""
    from labkit import adapters, env, models

    env.quiet()
    model, _ = models.load_base(device="cpu")
    return adapters.add(model, "lora", r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def fsdp2_batch():
    """4 rows of 24 random token ids, the same in every process."""
    import torch

    return torch.randint(3, 500, (4, 24), generator=torch.Generator().manual_seed(0))


def fsdp2_losses(model, ids, mean=lambda loss: loss.item(), steps: int = 3) -> list[float]:
    """STEPS steps of AdamW (lr 1e-2) on IDS (its own labels); each step's loss through MEAN (a process group's
    mean over its ranks in the worker, the loss itself for one unsharded model)."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(mean(loss.detach().clone()))
    return losses


@pytest.mark.slow
def test_torch_fsdp2_itself_shards_on_cpu_with_gloo(tmp_path):
    """What accelerate does not route on CPUs, torch does: fully_shard (FSDP2) with gloo keeps half of
    each LoRA matrix on each of 2 processes, and trains like one unsharded model on the whole batch (here)."""
    worker = tmp_path / "fsdp2_worker.py"
    worker.write_text(FSDP2_WORKER)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    assert two[0]["full"] == [4, 256] and two[0]["local"] == two[1]["local"] == [2, 256]  # half of A (4 x 256) each
    assert two[0]["losses"] == two[1]["losses"] and len(two[0]["losses"]) == 3
    one = fsdp2_losses(fsdp2_model(), fsdp2_batch())
    # equal-length rows, so the mean of the two halves' means is the whole batch's mean
    assert max(abs(a - b) for a, b in zip(two[0]["losses"], one)) < LOSS_TOLERANCE


# ----------------------------------------------------------------------------- lesson 16's exercise

def test_rank_losses_average_to_the_global_token_mean_and_its_check_catches_the_naive_recipe(checker_env):
    import torch

    from labkit import check as C

    ranks = [torch.tensor([4.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([])]
    losses = scale.rank_losses(ranks)
    assert losses.mean().item() == pytest.approx(7 / 4) and losses.tolist() == pytest.approx([3.0, 2.25, 0.0])
    with pytest.raises(ValueError, match="no rank holds a trained token"):
        scale.rank_losses([torch.tensor([]), torch.tensor([])])
    wrong = {"each rank's own mean (naive)": lambda t: torch.stack([x.mean() for x in t]),
             "the global count without the factor N": lambda t: torch.stack([x.sum() for x in t]) / sum(x.numel() for x in t),
             "its own count times N": lambda t: torch.stack([x.sum() / x.numel() * len(t) for x in t])}
    for name, fn in wrong.items():
        result = C.check("rank_losses", fn)
        assert not result.passed and "problem:" in result.message, name
    right = lambda t: torch.stack([x.sum() for x in t]) * len(t) / torch.cat(list(t)).numel()  # noqa: E731
    assert C.check("rank_losses", right).passed
