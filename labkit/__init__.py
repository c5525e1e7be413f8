"""labkit: the helper package of a hands-on course on fine-tuning LLMs. One idea per module:

- the model and its data: env (device, seeds, quiet offline defaults), models (load any causal LM; the bundled
  one), chat (prompt, completion, turn end, stop tokens and BOS from the tokenizer's own chat template), corpus
  and data (the generated world and the course's datasets), dataprep (deduplication, n-gram overlap,
  filters: data quality)
- adapters and their maths: lora (LoRA from scratch, GPT-2's Conv1D included), lowrank (the SVD of an update),
  adapters (peft: configs, targets, atomic save, generate), quant (NF4 from scratch), qlora (4-bit loading and
  training), memory (what training needs in bytes, on one GPU and sharded), ship/ (merge, 4-bit merges, many
  adapters, combinations, GGUF: one file each)
- training: train (the loop, its optimizer set-up and epoch order), sft (prompt masking, SFT), preference
  (reward model, DPO, the SFT model they start from), hedge (preference data that asks for something: a model
  that hedges, its pairs and the rule that measures it),
  preference_losses (IPO, SimPO, ORPO next to DPO), ppo (PPO with a KL
  penalty), grpo and grpo_trl (GRPO from scratch, checked against trl), rewards (verifiable rewards), tools (tool calls:
  their format, execution and scoring), encoder
  (MiniLM baselines), scale/ (configuration, global batches, the run) and launcher (one script on 1 or many
  processes), forgetting, tuning
- measuring: evaluate (greedy answers and their scores, exact match, win rate, the other metrics), stats
  (intervals and McNemar's paired test: how sure a score is), judge, rag (retrieval and the reader), interview
- lessons/: what a lesson runs and reads rather than teaches (sweeps, verdicts, figures, the mask viewer), one
  file per lesson that needs one (data, data_report, grpo, preference, sft)
- course/: the course's machinery (show, render, widgets, seeds and seed_claims, exercise_notebooks, links,
  syllabus, contract, cli: `labkit doctor`); check (the grader) and checks (one file of quizzes per lesson)
- small shared helpers: atomic (atomic file and folder writes), guard (argument checks with clear errors)

Importing labkit is cheap: torch and transformers are imported only when a function needs them.
"""

__version__ = "0.1.0"
