"""Lesson-side runs, sweeps, verdicts and plots: what a lesson calls, not what it teaches. The ideas a
learner reads live in the short modules of labkit (labkit.dataprep, labkit.sft, ...); the code here runs
them at the sizes a lesson needs (a learning-curve sweep, a distillation run), scores the results, reads
them into printed lines and draws the figures, and is what the scripts in scripts/ call to make the
shipped results under labkit/assets/results/."""
