"""labkit.grpo's loss next to trl's GRPOTrainer, on trl's own batches, while trl trains.

``compare`` runs trl's GRPOTrainer for a few steps. At every step it lets trl compute its loss, then
recomputes the same loss with labkit.grpo from the same sampled token ids: labkit's own log-probs
(policy, pi_old at sampling time, pi_ref), its own group advantages from the rewards trl's reward
function returned, and ``grpo_loss``. With num_iterations = 2 each batch is used twice, the second
time after an update: there pi_theta, pi_old and pi_ref all differ, ratios get clipped and the KL is
not 0, so the comparison is not at a trivial point. trl's loss is evaluated for each loss_type, ratio
level (token, sequence) and KL weighting on the same batch by setting the trainer's attributes before
calling its own ``_compute_loss``.

It reads trl 1.16's GRPOTrainer internals (``_generate_and_score_completions``, ``_compute_loss``);
if trl renames them, it raises a RuntimeError saying what is missing, never a silent pass.
tests/test_grpo.py asserts the equality (to 1e-5); lesson 11 prints it on its own task.
"""

from __future__ import annotations

import copy
import tempfile

import torch

from . import grpo

LEVELS = (("token", True), ("sequence", True), ("token", False))  # (importance_sampling_level, kl_times_ratio)


def _need(condition, what):
    if not condition:
        import trl

        raise RuntimeError(f"trl {trl.__version__} no longer has {what}; labkit.grpo_trl reads GRPOTrainer's internals "
                           f"(trl 1.16's grpo_trainer.py) to compare losses: update it and labkit.grpo together.")


def compare(lm, tok, prompts: list[str], reward_fn, stop_ids: list[int], group_size: int = 4,
            max_completion_length: int = 10, temperature: float = 0.9, steps: int = 4, num_iterations: int = 2,
            beta: float = 0.04, epsilon: float = 0.2, epsilon_high: float = 0.28, scale_rewards: str = "group",
            lr: float = 2e-4, seed: int = 0, columns: dict | None = None) -> dict:
    """Train a copy of LM with trl's GRPOTrainer for STEPS steps on PROMPTS (templated strings), one batch
    of len(PROMPTS) x GROUP_SIZE answers per generation, and compare labkit's loss with trl's at each step.

    reward_fn(prompts, completions, **columns) -> floats, trl's signature: COLUMNS {name: one value per
    prompt} become dataset columns, which trl passes to it (e.g. {"gold": [...]} for
    labkit.rewards.exact_reward). A prompt whose template writes BOS loses it (labkit.chat.for_trl), as
    trl's tokenizer adds it again. STOP_IDS: the ids that end an answer; they become the copy's
    generation_config.eos_token_id, which is where trl reads them.
    Returns {"losses": one dict per (step, loss_type, level, kl_times_ratio) with "trl", "labkit",
    "kl", "trl_kl", "clip_frac", "trl_clip_frac"; "advantages": the largest |labkit - trl| advantage
    difference per generation; "by_type": {step: {(loss_type, level, kl_times_ratio): trl's loss}};
    "rewards": what the reward function returned, per generation; "eos_token_ids": trl's stop ids}.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from .chat import for_trl
    from .env import quiet

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
    returned, losses, advantages, by_type = [], [], [], {}

    def reward(prompts, completions, **kwargs):
        r = [float(x) for x in reward_fn(prompts, completions, **kwargs)]
        returned.append(r)
        return r

    class Probe(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages"):
                _need(key in out, f"the batch key {key!r} from _generate_and_score_completions")
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
            attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
            P = out["prompt_ids"].shape[1]
            with torch.no_grad():  # labkit's own pi_old and pi_ref log-probs, at sampling time
                out["labkit_old"] = grpo.completion_logps(self.model, ids, attn, P, self.temperature)
                out["labkit_ref"] = grpo.completion_logps(self.ref_model, ids, attn, P, self.temperature)
            out["labkit_adv"] = grpo.group_advantages(torch.tensor(returned[-1], device=ids.device),
                                                      self.num_generations, scale_rewards)
            advantages.append((out["labkit_adv"] - out["advantages"]).abs().max().item())
            return out  # trl shuffles the rows of this dict together, so labkit's rows stay aligned

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            saved = (self.loss_type, self.importance_sampling_level, self.args.use_bias_correction_kl)
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
            attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
            with torch.no_grad():
                logps = grpo.completion_logps(model, ids, attn, inputs["prompt_ids"].shape[1], self.temperature)
            step = by_type.setdefault(self._step, {})
            try:
                for loss_type in grpo.LOSS_TYPES:
                    for level, times_ratio in LEVELS:
                        self.loss_type, self.importance_sampling_level = loss_type, level
                        self.args.use_bias_correction_kl = times_ratio
                        with torch.no_grad():
                            theirs = super()._compute_loss(model, inputs).item()
                        ours, metrics = grpo.grpo_loss(
                            logps, inputs["labkit_old"], inputs["labkit_ref"], inputs["labkit_adv"],
                            inputs["completion_mask"], self.beta, self.epsilon_low, self.epsilon_high, loss_type,
                            self.max_completion_length, level, times_ratio)
                        logged = self._metrics["train"]
                        losses.append({"step": self._step, "loss_type": loss_type, "level": level,
                                       "kl_times_ratio": times_ratio, "trl": theirs, "labkit": ours.item(),
                                       "kl": metrics["kl"], "trl_kl": logged["kl"][-1],
                                       "clip_frac": metrics["clip_frac"],
                                       "trl_clip_frac": logged["clip_ratio/region_mean"][-1]})
                        step[(loss_type, level, times_ratio)] = theirs
            finally:
                self.loss_type, self.importance_sampling_level, self.args.use_bias_correction_kl = saved
            return loss

    for name in ("_compute_loss", "_generate_and_score_completions"):
        _need(hasattr(GRPOTrainer, name), f"GRPOTrainer.{name}")
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
        trainer = Probe(model=policy, reward_funcs=reward, processing_class=tok, args=args,
                        train_dataset=Dataset.from_list(rows))
        _need(getattr(trainer, "ref_model", None) is not None, "a separate ref_model when beta > 0 without peft")
        trainer.remove_callback(PrinterCallback)  # trl's per-step log dicts stay out of the output
        trainer.train()
    return {"losses": losses, "advantages": advantages, "by_type": by_type, "rewards": returned,
            "eos_token_ids": list(trainer.eos_token_ids)}


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
