"""The claims each lesson makes over seeds: {lesson stem: {claim: rule(figures) -> bool}}.

A lesson prints them with ``print(seeds.claims(LESSON, MODEL))``, one line each ("holds at 3 of 3 seeds:
..."); the figures are what the lesson records (labkit.show.record_many) and scripts/seed_spread.py
collects at SEED 0, 1, 2 into labkit/assets/results/seeds_<lesson>.json. tests/test_seeds.py fails when a
claim here does not hold at every shipped seed: a claim that does not hold is not made.
"""

CLAIMS: dict[str, dict] = {}
