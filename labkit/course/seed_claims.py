"""The claims each lesson makes over seeds: {lesson stem: {claim: rule(figures) -> bool}}.

A lesson prints them with ``print(seeds.claims(LESSON, MODEL))``, one line each ("holds at 3 of 3 seeds:
..."); the figures are what the lesson records (labkit.course.show.record_many) and scripts/seed_spread.py
collects at SEED 0, 1, 2 into labkit/assets/results/seeds_<lesson>.json. tests/test_seeds.py fails when a
claim here does not hold at every shipped seed: a claim that does not hold is not made.
"""

CLAIMS: dict[str, dict] = {}

# lesson 14: the forgetting grid shipped at each seed (scripts/forgetting_grid.py --seed N), read by forgetting.grid_figures
CLAIMS["14_forgetting"] = {
    "in the grid, the run with all three risky settings (the high learning rate, rank 64, no general data) forgot "
    "most, its general-text perplexity more than x10 the base's":
        lambda f: f["grid_worst_is_all_risky"] and f["grid_worst_ppl_ratio"] > 10,
    "every other run of the grid stayed within x1.2 of the base's perplexity: any one remedy alone avoided it":
        lambda f: f["grid_others_max_ppl_ratio"] < 1.2,
    "without that one run, no remedy moved the geometric mean of the perplexity ratios by more than 10%":
        lambda f: all(0.9 <= f[f"grid_{k}_remedy_ratio_without_worst"] <= 1.1 for k in ("lr", "r", "mix")),
    "the low learning rate at rank 4 learned little (at most 30% exact match) while every other run reached 90% "
    "or more":
        lambda f: f["grid_low_lr_small_rank_max_exact"] <= 0.3 and f["grid_others_min_exact"] >= 0.9,
    "in the live runs, the high learning rate learned the task (90% exact match or more) at a general-text cost "
    "under x1.1, and the low one learned nothing (0%) and forgot nothing (under x1.01)":
        lambda f: f["high_lr_exact"] >= 0.9 and f["high_lr_ppl_ratio"] < 1.1 and f["low_lr_exact"] == 0
        and f["low_lr_ppl_ratio"] < 1.01,
}

# lesson 09: trl's DPOTrainer with LoRA on the hedge pairs, from the SFT model that hedges (labkit.hedge)
CLAIMS["09_dpo"] = {
    "DPO + SFT term removes the hedge: clean answers rise by 30 points or more":
        lambda f: f["rpo_clean"] - f["sft_clean"] >= 0.3,
    "... and keeps the values: exact match is at least the SFT model's":
        lambda f: f["rpo_exact"] >= f["sft_exact"],
    "... and the rule judge prefers its answers to the SFT model's (win rate above 60%)":
        lambda f: f["rpo_win_vs_sft"] > 0.6,
    "plain DPO at the same steps breaks the answers: exact match falls by 20 points or more":
        lambda f: f["dpo_exact"] <= f["sft_exact"] - 0.2,
    "plain DPO lowers log pi(chosen) on held-out pairs; with the SFT term it rises":
        lambda f: f["dpo_chosen_move"] < 0 < f["rpo_chosen_move"],
    "the smaller beta, the larger the log-ratio margin after the same steps (beta 0.01, 0.1, 1)":
        lambda f: f["margin_beta_0_01"] > f["margin_beta_0_1"] > f["margin_beta_1"],
}

# lesson 10: trl's DPO, IPO, SimPO and ORPO trainers with LoRA on the hedge pairs, the same steps (labkit.hedge)
CLAIMS["10_beyond_dpo"] = {
    "IPO and SimPO remove the hedge with no SFT term: clean answers 90% or more":
        lambda f: min(f["ipo_clean"], f["simpo_clean"]) >= 0.9,
    "... and keep the values: exact match within 5 points of the SFT model's, or above":
        lambda f: min(f["ipo_exact"], f["simpo_exact"]) >= f["sft_exact"] - 0.05,
    "plain DPO at the same steps breaks the answers: exact match falls by 20 points or more":
        lambda f: f["dpo_exact"] <= f["sft_exact"] - 0.2,
    "ORPO removes less of the hedge than IPO and SimPO in these steps":
        lambda f: f["orpo_clean"] < min(f["ipo_clean"], f["simpo_clean"]),
}

# lesson 11: GRPO from the 20-step SFT start against SFT continued for as many updates, answers read up to
# their first special token (rewards.stop_at_special_tokens); the KL run at beta 0.04; GRPO on format_reward
CLAIMS["11_rl_verifiable_rewards"] = {
    "GRPO raises held-out pass@1 by more than 40 points":
        lambda f: f["pass1_grpo"] - f["pass1_start"] > 0.4,
    "SFT on the gold answers of the same questions, for as many updates, reaches a pass@1 at least as high as GRPO's":
        lambda f: f["pass1_sft"] >= f["pass1_grpo"],
    "every question that none of the start's samples answered is answered after GRPO, and after more SFT":
        lambda f: f["never_reached_grpo"] == f["never_start"] == f["never_reached_sft"],
    "at beta 0.04 the last step's mean reward is within 0.05 of the run without the KL term":
        lambda f: abs(f["reward_last_beta"] - f["reward_last_beta0"]) <= 0.05,
    "GRPO on the format-only reward raises held-out pass@1 too, but less than on the exact reward":
        lambda f: f["pass1_start"] < f["pass1_hack"] < f["pass1_grpo"],
}

# lesson 08: a reward model from the preference pairs; PPO on a grader that pays for length, with the KL penalty
# at KL_COEF and without it; PPO on the reward model from the SFT model that hedges (labkit.hedge)
CLAIMS["08_reward_model_rlhf"] = {
    "the reward model trained by trl ranks 80% or more of the held-out pairs right":
        lambda f: f["rm_accuracy"] >= 0.8,
    "without the KL penalty the grader's score rose more than with it, and the KL to pi_ref ended over twice as large":
        lambda f: f["nokl_score_gain"] > f["kl_score_gain"] and f["nokl_kl"] > 2 * f["kl_kl"],
    "without the penalty the answers at least doubled in length and exact match fell by 25 points or more, while "
    "as many or more held the right rating":
        lambda f: f["nokl_chars"] >= 2 * f["sft_chars"] and f["nokl_exact"] <= f["sft_exact"] - 0.25
        and f["nokl_contains"] >= f["sft_contains"],
    "with the penalty the answers stayed within 10% of pi_ref's length":
        lambda f: abs(f["kl_chars"] / f["sft_chars"] - 1) <= 0.1,
    "PPO on the reward model removed the hedge (clean answers from under 10% to 90% or more) and raised the "
    "reward model's held-out score":
        lambda f: f["hedge_sft_clean"] < 0.1 and f["rmppo_clean"] >= 0.9 and f["rmppo_heldout_rm_score_gain"] > 0,
    "... but did not raise exact match of the value":
        lambda f: f["rmppo_exact"] <= f["hedge_sft_exact"],
}
