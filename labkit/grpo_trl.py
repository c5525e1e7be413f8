"""labkit.grpo's loss next to trl's GRPOTrainer, on trl's own batches, while trl trains.

``side_by_side(trainer)`` takes a GRPOTrainer built the plain way (GRPOConfig, a reward function, a
dataset, a peft_config or not) before ``trainer.train()``. At every step it lets trl compute its loss,
then recomputes the same loss with labkit.grpo from the same sampled token ids: labkit's own log-probs
(policy, pi_old at sampling time, pi_ref), its own group advantages from the rewards trl's reward
function returned, and ``grpo_loss``. trl's loss is also evaluated for each loss_type, ratio level
(token, sequence) and KL weighting on the same batch, by setting the trainer's attributes before
calling its own ``_compute_loss``. With num_iterations = 2 each batch is used twice, the second time
after an update: there pi_theta, pi_old and pi_ref all differ, ratios get clipped and the KL is not 0,
so the comparison is not at a trivial point. ``compare`` builds such a trainer (full fine-tuning) and
runs it; tests/test_grpo.py asserts the equality (to 1e-5); lesson 11 prints it with LoRA.

It reads trl 1.16's GRPOTrainer internals (``_generate_and_score_completions``, ``_compute_loss``,
``reward_funcs``); if trl renames them, it raises a RuntimeError saying what is missing, never a
silent pass.
"""

from __future__ import annotations

import copy
import functools
import tempfile

import torch

from . import grpo
from .chat import for_trl
from .env import quiet

LEVELS = (("token", True), ("sequence", True), ("token", False))  # (importance_sampling_level, kl_times_ratio)


def _need(condition, what):
    if not condition:
        import trl

        raise RuntimeError(f"trl {trl.__version__} no longer has {what}; labkit.grpo_trl reads GRPOTrainer's internals "
                           f"(trl 1.16's grpo_trainer.py) to compare losses: update it and labkit.grpo together.")


def side_by_side(trainer, ref=None) -> dict:
    """Make TRAINER (a trl GRPOTrainer, not yet trained) record labkit's loss next to its own at every step.

    REF: the frozen pi_ref for labkit's log-probs; default trainer.ref_model, or, for a peft model that
    trl gave no ref_model, the model with its adapter switched off (pass the model the adapter was added
    to, a separate copy, to check that too). The trainer's own training is unchanged.
    Returns a dict that fills as the trainer trains: {"losses": one dict per (step, loss_type, level,
    kl_times_ratio) with "trl", "labkit", "kl", "trl_kl", "clip_frac", "trl_clip_frac"; "advantages": the
    largest |labkit - trl| advantage difference per generation; "by_type": {step: {(loss_type, level,
    kl_times_ratio): trl's loss}}; "rewards": what the reward function returned, per generation}.
    """
    for name in ("_compute_loss", "_generate_and_score_completions", "reward_funcs", "num_generations"):
        _need(hasattr(trainer, name), f"GRPOTrainer.{name}")
    _need(len(trainer.reward_funcs) == 1 and callable(trainer.reward_funcs[0]), "a single reward function")
    out = {"losses": [], "advantages": [], "by_type": {}, "rewards": []}
    reward_fn, generate, compute = trainer.reward_funcs[0], trainer._generate_and_score_completions, trainer._compute_loss

    @functools.wraps(reward_fn)
    def reward(*args, **kwargs):
        r = [float(x) for x in reward_fn(*args, **kwargs)]
        out["rewards"].append(r)
        return r

    def generate_and_score(inputs):
        batch = generate(inputs)
        for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages"):
            _need(key in batch, f"the batch key {key!r} from _generate_and_score_completions")
        ids, attn, P = _ids(batch)
        with torch.no_grad():  # labkit's own pi_old and pi_ref log-probs, at sampling time
            batch["labkit_old"] = grpo.completion_logps(trainer.model, ids, attn, P, trainer.temperature)
            batch["labkit_ref"] = _ref_logps(trainer, ref, ids, attn, P)
        batch["labkit_adv"] = grpo.group_advantages(torch.tensor(out["rewards"][-1], device=ids.device),
                                                    trainer.num_generations, trainer.args.scale_rewards)
        out["advantages"].append((batch["labkit_adv"] - batch["advantages"]).abs().max().item())
        return batch  # trl shuffles the rows of this dict together, so labkit's rows stay aligned

    def compute_loss(model, inputs):
        loss = compute(model, inputs)
        with torch.no_grad():
            _compare(trainer, compute, model, inputs, out)
        return loss

    trainer.reward_funcs[0] = reward
    trainer._generate_and_score_completions = generate_and_score
    trainer._compute_loss = compute_loss
    return out


def _ids(batch):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    return ids, attn, batch["prompt_ids"].shape[1]


def _ref_logps(trainer, ref, ids, attn, P):
    ref = ref if ref is not None else trainer.ref_model
    if ref is not None:
        return grpo.completion_logps(ref, ids, attn, P, trainer.temperature)
    model = trainer.accelerator.unwrap_model(trainer.model)
    _need(hasattr(model, "disable_adapter"), "a ref_model, or a peft model whose adapter can be switched off")
    with model.disable_adapter():
        return grpo.completion_logps(model, ids, attn, P, trainer.temperature)


def _compare(trainer, compute, model, inputs, out):
    """trl's loss for every loss_type and ratio/KL setting on INPUTS, next to labkit's grpo_loss (no gradient)."""
    saved = (trainer.loss_type, trainer.importance_sampling_level, trainer.args.use_bias_correction_kl)
    ids, attn, P = _ids(inputs)
    logps = grpo.completion_logps(model, ids, attn, P, trainer.temperature)
    step = out["by_type"].setdefault(trainer._step, {})
    try:
        for loss_type in grpo.LOSS_TYPES:
            for level, times_ratio in LEVELS:
                trainer.loss_type, trainer.importance_sampling_level = loss_type, level
                trainer.args.use_bias_correction_kl = times_ratio
                theirs = compute(model, inputs).item()
                ours, metrics = grpo.grpo_loss(
                    logps, inputs["labkit_old"], inputs["labkit_ref"], inputs["labkit_adv"], inputs["completion_mask"],
                    trainer.beta, trainer.epsilon_low, trainer.epsilon_high, loss_type,
                    trainer.max_completion_length, level, times_ratio)
                logged = trainer._metrics["train"]
                out["losses"].append({"step": trainer._step, "loss_type": loss_type, "level": level,
                                      "kl_times_ratio": times_ratio, "trl": theirs, "labkit": ours.item(),
                                      "kl": metrics["kl"].item(), "trl_kl": logged["kl"][-1] if trainer.beta else 0.0,
                                      "clip_frac": metrics["clip_frac"].item(),
                                      "trl_clip_frac": logged["clip_ratio/region_mean"][-1]})
                step[(loss_type, level, times_ratio)] = theirs
    finally:
        trainer.loss_type, trainer.importance_sampling_level, trainer.args.use_bias_correction_kl = saved


def compare(lm, tok, prompts: list[str], reward_fn, stop_ids: list[int], group_size: int = 4,
            max_completion_length: int = 10, temperature: float = 0.9, steps: int = 4, num_iterations: int = 2,
            beta: float = 0.04, epsilon: float = 0.2, epsilon_high: float = 0.28, scale_rewards: str = "group",
            lr: float = 2e-4, seed: int = 0, columns: dict | None = None) -> dict:
    """Train a copy of LM (every weight, trl's own ref_model) with trl's GRPOTrainer for STEPS steps on
    PROMPTS (templated strings), one batch of len(PROMPTS) x GROUP_SIZE answers per generation, and
    compare labkit's loss with trl's at each step (``side_by_side``).

    reward_fn(prompts, completions, **columns) -> floats, trl's signature: COLUMNS {name: one value per
    prompt} become dataset columns, which trl passes to it. STOP_IDS become the copy's
    generation_config.eos_token_id, which is where trl reads them. Returns ``side_by_side``'s dict plus
    "eos_token_ids": trl's stop ids.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    quiet()
    if not prompts:
        raise ValueError("compare needs at least one prompt.")
    columns = dict(columns or {})
    bad = {k: len(v) for k, v in columns.items() if len(v) != len(prompts)}
    if bad:
        raise ValueError(f"each column needs one value per prompt ({len(prompts)}); got lengths {bad}.")
    rows = [{"prompt": for_trl(tok, {"prompt": p})["prompt"], **{k: v[i] for k, v in columns.items()}}
            for i, p in enumerate(prompts)]
    policy = copy.deepcopy(lm).requires_grad_(True)
    policy.generation_config.eos_token_id = list(stop_ids)
    device = next(policy.parameters()).device
    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=group_size * len(prompts),
                          num_generations=group_size, max_completion_length=max_completion_length,
                          temperature=temperature, learning_rate=lr, beta=beta, epsilon=epsilon,
                          epsilon_high=epsilon_high, num_iterations=num_iterations, scale_rewards=scale_rewards,
                          loss_type="grpo", max_steps=steps, bf16=False, use_cpu=device.type == "cpu",
                          report_to="none", dataloader_pin_memory=False, disable_tqdm=True, save_strategy="no",
                          logging_strategy="no", seed=seed)
        for name in ("use_bias_correction_kl", "importance_sampling_level", "epsilon_high", "scale_rewards"):
            _need(hasattr(args, name), f"GRPOConfig.{name}")
        trainer = GRPOTrainer(model=policy, reward_funcs=reward_fn, processing_class=tok, args=args,
                              train_dataset=Dataset.from_list(rows))
        _need(getattr(trainer, "ref_model", None) is not None, "a separate ref_model when beta > 0 without peft")
        trainer.remove_callback(PrinterCallback)  # trl's per-step log dicts stay out of the output
        result = side_by_side(trainer)
        trainer.train()
    return {**result, "eos_token_ids": list(trainer.eos_token_ids)}


def table(result: dict, step: int | None = None, level: str = "token", kl_times_ratio: bool = True) -> str:
    """A few lines: trl's and labkit's loss for each loss_type at STEP (default: the last), and the largest
    difference over every step, loss type, ratio level and KL weighting."""
    rows = result["losses"]
    if not rows:
        raise ValueError("no losses were compared (did trl train for at least one step?).")
    step = max(r["step"] for r in rows) if step is None else step
    lines = [f"trl's GRPOTrainer and labkit's grpo_loss at step {step} ({level}-level ratios):",
             f"{'loss_type':<10}{'trl':>12}{'labkit':>12}{'|difference|':>14}"]
    for r in rows:
        if r["step"] == step and r["level"] == level and r["kl_times_ratio"] == kl_times_ratio:
            lines.append(f"{r['loss_type']:<10}{r['trl']:>12.7f}{r['labkit']:>12.7f}{abs(r['trl'] - r['labkit']):>14.1e}")
    worst = max(abs(r["trl"] - r["labkit"]) for r in rows)
    lines.append(f"largest |difference| over {len(rows)} comparisons ({len({r['step'] for r in rows})} steps x "
                 f"{len(grpo.LOSS_TYPES)} loss types x {len(LEVELS)} ratio/KL settings): {worst:.1e}")
    return "\n".join(lines)
