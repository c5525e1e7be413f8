"""The claims each lesson makes over seeds: {lesson stem: {claim: rule(figures) -> bool}}.

A lesson prints them with ``print(seeds.claims(LESSON, MODEL))``, one line each ("holds at 3 of 3 seeds:
..."); the figures are what the lesson records (labkit.show.record_many) and scripts/seed_spread.py
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
