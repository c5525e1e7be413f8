"""labkit: the helper package of a hands-on course on fine-tuning LLMs. One idea per module:

- the model and its data: env (device, seeds, quiet offline defaults), models (load any causal LM; the bundled
  one), chat (prompt, completion, turn end, stop tokens and BOS from the tokenizer's own chat template), corpus
  and data (the generated world and the course's datasets)
- adapters and their maths: lora (LoRA from scratch, GPT-2's Conv1D included), lowrank (the SVD of an update),
  adapters (peft: configs, targets, atomic save, generate), quant (NF4 from scratch), qlora (4-bit loading and
  training), memory (what training needs in bytes, on one GPU and sharded), ship (merge, mix, combine, GGUF)
- training: train (the loop, its optimizer set-up and epoch order), sft (prompt masking, SFT), preference
  (reward model, DPO, the SFT model they start from), hedge (preference data that asks for something: a model
  that hedges, its pairs and the rule that measures it),
  preference_losses (IPO, SimPO, ORPO next to DPO), ppo (PPO with a KL
  penalty), grpo and grpo_trl (GRPO from scratch, checked against trl), rewards (verifiable rewards), encoder
  (MiniLM baselines), scale and launcher (one script on 1 or many processes), forgetting, tuning
- measuring: evaluate (greedy answers and their scores, exact match, win rate, the other metrics), stats
  (intervals and McNemar's paired test: how sure a score is), judge, rag (retrieval and the reader), interview
- the teaching floor: widgets, show (labkit's own source in a notebook), check and checks (auto-checked
  exercises and quizzes), exercise_notebooks, render, launch (Colab and Binder links), cli (`labkit doctor`)
- small shared helpers: atomic (atomic file and folder writes), guard (argument checks with clear errors)

Importing labkit is cheap: torch and transformers are imported only when a function needs them.
"""

__version__ = "0.1.0"
