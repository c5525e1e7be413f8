"""Lesson 19's open-ended interview questions: data only (labkit.interview asks and reveals them).

Each question: id; lessons (the lessons whose measurements back the answer); topic; the question as an
interviewer asks it; a model answer (tight: what a strong candidate says in a minute); the figure that backs
it ("lesson NN, section S: what the lesson prints"); the follow-up an interviewer asks next, with a short
answer; key points (a label and the words that show a written answer touched it); and `then`, the id of
the checked part that follows it in the lesson (a quiz question or a code drill of labkit.check).
"""

OPEN = [
    dict(id="measure", lessons=["00"], topic="reading numbers", then="q19_interval_overlap",
         question="How do you tell whether your fine-tune really improved the model?",
         answer="Score both models on the same held-out questions; give each share with its interval (Wilson); "
                "compare the two with a paired test on the questions where they disagree (McNemar); repeat the "
                "claim over seeds. A difference inside the noise is reported as one, not as a win.",
         figure="lesson 00, section 3 (How to read the numbers: an interval, McNemar's p, a claim at 3 of 3 seeds)",
         follow_up="Your new model wins 78 to 74 out of 100. Ship it?",
         follow_up_answer="Not on that alone: count the questions each gets right that the other misses and test "
                          "those; four questions is within what a reseeded run moves.",
         points=[("same held-out questions", ["held-out", "held out", "same questions", "test set"]),
                 ("an interval, not a bare share", ["interval", "confidence", "error bar"]),
                 ("a paired test", ["paired", "mcnemar", "disagree"]),
                 ("seeds", ["seed"])]),
    dict(id="lora", lessons=["01"], topic="LoRA", then="lora_linear",
         question="Explain LoRA. What does it train, what does it cost, and what is the model at step 0?",
         answer="LoRA freezes W and learns a low-rank update beside it: W' = W + (alpha/r)·B·A, A of shape "
                "(r, d_in), B of shape (d_out, r). It trains r·(d_in + d_out) numbers per matrix instead of "
                "d_in·d_out, so gradients, optimizer states and checkpoints shrink by orders of magnitude. B "
                "starts at zero, so step 0 is exactly the base model; after training B·A folds into W and costs "
                "nothing at inference.",
         figure="lesson 01, section 3 (labkit's layer against peft's: the largest difference) and section 5 "
                "(the 7B count on the meta device)",
         follow_up="Why not initialise both A and B at random, or both at zero?",
         follow_up_answer="Both random: B·A is not zero and step 0 is a perturbed, worse model. Both zero: each "
                          "one's gradient is proportional to the other, so neither ever moves.",
         points=[("W frozen", ["frozen", "freeze"]), ("low-rank B·A", ["low-rank", "low rank", "b·a", "b*a", "b @ a", "rank"]),
                 ("r·(d_in + d_out) parameters", ["d_in", "r·(", "r*(", "r(d", "parameters"]),
                 ("B = 0: step 0 is the base", ["zero", "b = 0", "b=0"]), ("merge at no inference cost", ["merge"])]),
    dict(id="rank", lessons=["01", "02"], topic="LoRA", then="q19_which_rank",
         question="Which rank and which learning rate would you use?",
         answer="Start small (r 8 to 16, alpha about 2r) and sweep a few ranks against a few learning rates, "
                "scored on held-out data with general-text perplexity beside it. The two interact: at a fixed "
                "alpha/r the update still grows with r, so large ranks diverge at rates small ones take. A "
                "real update is close to low-rank; extra rank buys little once held-out scores stop moving.",
         figure="lesson 02, section 3 (the learning rate x rank sweep: held-out exact match, the runs that "
                "diverged) and lesson 01, section 7 (the SVD view of a real update)",
         follow_up="At step 300 your loss jumps up and stays there. What do you do?",
         follow_up_answer="Lower the learning rate (and add warm-up or gradient clipping), most of all at the "
                          "larger ranks: a diverged run does not recover by itself.",
         points=[("start small", ["small", "r 8", "r=8", "8 to 16", "8-16"]), ("sweep, held-out", ["sweep", "held-out", "held out", "validation"]),
                 ("rank and learning rate interact", ["learning rate", "lr ", "lr=", "step size"]), ("alpha", ["alpha"])]),
    dict(id="qlora", lessons=["04", "05"], topic="QLoRA", then="q19_nf4_65b_gb",
         question="How does QLoRA fine-tune a 65B model on one 48 GB GPU?",
         answer="The frozen base is stored in NF4: 4-bit codes at the quantiles of a normal distribution, one "
                "absmax per block of 64 weights, the absmaxes themselves quantised (double quantisation). "
                "Each layer is dequantised on the fly in the forward pass; gradients flow through it into "
                "16-bit LoRA adapters, the only weights trained. A paged optimizer absorbs memory spikes and "
                "gradient checkpointing trades compute for activation memory.",
         figure="lesson 04, section 3 (bits per weight with and without double quantisation) and lesson 05, "
                "section 1 (the memory table: what fits on which GPU)",
         follow_up="Why NF4 rather than plain int4?",
         follow_up_answer="Weights are roughly normal: NF4's 16 levels sit at equal-probability quantiles, so "
                          "typical weights are rounded less than with evenly spaced levels (lesson 04, section 4, "
                          "compares them on real weights).",
         points=[("4-bit NF4 base", ["nf4", "4-bit", "4 bit"]), ("frozen base, adapters train", ["adapter", "lora"]),
                 ("blockwise constants / double quantisation", ["block", "absmax", "double"]),
                 ("dequantised in the forward", ["dequant"]), ("paged optimizer or checkpointing", ["paged", "checkpoint"])]),
    dict(id="sft_labels", lessons=["06"], topic="SFT", then="q19_label_mask",
         question="Walk me through the labels of an SFT batch. How do you know they are right?",
         answer="The input is the conversation rendered by the tokenizer's own chat template; the labels copy "
                "the input ids with -100 on the prompt and the padding, so the loss covers the answer and its "
                "turn end only. Special tokens come from the tokenizer, never typed by hand. To check, decode "
                "the tokens whose label is not -100: exactly the answer and its end-of-turn token must show.",
         figure="lesson 06, section 3 (the token-mask viewer) and section 2 (labkit's labels equal to trl's)",
         follow_up="Your fine-tuned model never stops generating. Where do you look?",
         follow_up_answer="At the label of the turn end: if it is -100 (pad = eos masks it with the padding, or "
                          "the template drops it) the model never learned to stop. Lesson 18's clinic has the case.",
         points=[("-100 on the prompt", ["-100", "mask"]), ("chat template", ["template"]),
                 ("turn end / EOS learned", ["eos", "turn end", "end-of-turn", "end of turn", "stop"]),
                 ("check by decoding", ["decode", "viewer", "inspect", "print"])]),
    dict(id="attention", lessons=["06"], topic="SFT", then="causal_attention",
         question="What does the causal mask do, and what changes when you pack several examples into one row?",
         answer="Each position may attend to itself and earlier positions only: scores above the diagonal are "
                "set to -inf before the softmax, so their weights are exactly zero and each row still sums to "
                "one. Packing adds a boundary: an example must not attend to the one before it, so the mask "
                "becomes block-diagonal (or position_ids restart per example, with a kernel that uses them), "
                "and the label across the boundary is -100.",
         figure="lesson 06, section 5 (packing: position_ids that restart per example)",
         follow_up="Why divide the scores by sqrt(d)?",
         follow_up_answer="A dot product of two d-dimensional vectors of unit-variance entries has variance d; "
                          "dividing by sqrt(d) keeps the softmax out of saturation, where gradients vanish.",
         points=[("future positions masked", ["future", "earlier", "previous", "diagonal", "triangular"]),
                 ("before the softmax, -inf", ["-inf", "infinity", "softmax"]),
                 ("packing: no attention across examples", ["block", "boundary", "across", "position_ids", "position ids"])]),
    dict(id="data", lessons=["07"], topic="data", then="q19_contamination",
         question="Your score jumps after you add a scraped dataset. What do you check before you believe it?",
         answer="A leak first: the n-gram overlap of every test item with the training data (a share of its "
                "13-grams, since rows of one template share some), and entities on both sides of the split "
                "(the same customer asked in other words escapes n-gram checks: split by entity). Then "
                "near-duplicates (MinHash) and label noise. Report the score with its interval before and "
                "after decontamination.",
         figure="lesson 07, section 5 (the 13-gram overlap of every held-out row; a split by row against a split "
                "by applicant)",
         follow_up="How much data do you need?",
         follow_up_answer="Measure it: a learning curve on held-out data at a fixed step budget shows where "
                          "more rows stop paying (lesson 07, section 2).",
         points=[("leak / contamination", ["leak", "contamina", "overlap"]), ("n-grams", ["gram"]),
                 ("split by entity", ["entity", "entities", "applicant", "customer", "user"]),
                 ("duplicates", ["duplicate", "minhash", "dedup"])]),
    dict(id="dpo", lessons=["08", "09"], topic="DPO", then="dpo_mean_loss",
         question="How does DPO work, and how does it follow from RLHF with PPO?",
         answer="RLHF fits a reward model on preference pairs (Bradley-Terry), then maximises reward minus "
                "beta·KL to the SFT model with PPO. That objective's optimum has a closed form, so the reward "
                "can be written as beta·log(pi_theta/pi_ref) plus a per-prompt constant; put into "
                "Bradley-Terry, the constant cancels: loss = -log sigma(beta·(chosen log-ratio - rejected "
                "log-ratio)). No reward model, no sampling; pi_ref stays.",
         figure="lesson 09, section 2 (labkit's loss against trl's, printed side by side) and section 6 (the "
                "margin each beta reached)",
         follow_up="The chosen answers' log-probability falls during training. Is that a bug?",
         follow_up_answer="Not by itself: the loss asks only for the margin, and both can fall while the rejected "
                          "falls faster. An SFT term on the chosen answer holds it up (lesson 09, section 5).",
         points=[("Bradley-Terry / reward model", ["bradley", "reward model"]), ("KL to the reference", ["kl"]),
                 ("implicit reward beta·log ratio", ["log-ratio", "log ratio", "log(pi", "implicit"]),
                 ("no reward model, no sampling", ["no reward model", "without a reward", "no sampling", "no rl"]),
                 ("pi_ref stays", ["reference", "pi_ref"])]),
    dict(id="dpo_family", lessons=["10"], topic="DPO variants", then="q19_ipo",
         question="When would you use IPO, SimPO or ORPO instead of DPO?",
         answer="IPO when preferences are near-deterministic: DPO pushes the margin on for ever, IPO pulls it "
                "to a target. SimPO when pi_ref does not fit in memory: length-normalised log-probabilities and "
                "a margin, no reference. ORPO to skip the separate SFT stage: an odds-ratio term added to the "
                "SFT loss, no reference. Each trades one failure for a new hyperparameter; compare them on your "
                "held-out preferences.",
         figure="lesson 10, section 3 (what each loss did to the model) and section 4 (time and memory per step)",
         follow_up="What does a DPO step cost next to a PPO step?",
         follow_up_answer="DPO: forward and backward on two answers plus the reference's forward. PPO: "
                          "generation, then the reward model, a value model and the reference, all in memory "
                          "(lesson 10, section 4).",
         points=[("IPO: target margin", ["target", "overfit", "regress"]),
                 ("SimPO: no reference, length-normalised", ["length", "average", "normalis", "normaliz"]),
                 ("ORPO: one stage with SFT", ["odds", "one stage", "single stage", "sft"]),
                 ("measured, not assumed", ["held-out", "held out", "measure", "compare"])]),
    dict(id="grpo", lessons=["11"], topic="GRPO", then="mean_pass_at_k",
         question="How does GRPO work, and how do you show that it helped?",
         answer="Sample G answers per prompt, score each with a program (a verifier), and give each answer its "
                "reward minus its group's mean, over the group's std, as the advantage: no value network. The "
                "loss is PPO's clipped objective per token plus beta times a KL estimate (k3) to pi_ref. A group "
                "whose answers all score the same teaches nothing, so start from a model that is right "
                "sometimes. Show it with pass@1 and pass@k on held-out problems, against more SFT at the same "
                "compute.",
         figure="lesson 11, section 2 (pass@k of the start, groups without signal) and section 5 (GRPO against "
                "more SFT)",
         follow_up="The reward climbs but held-out accuracy does not. Why?",
         follow_up_answer="The reward pays something other than the right answer: the verifier checks too "
                          "little (lesson 11, section 7, a format reward; its exercises game one paid wherever the "
                          "total appears). Read samples and tighten the verifier.",
         points=[("a group per prompt", ["group"]), ("advantage: reward minus group mean", ["mean", "baseline", "advantage"]),
                 ("no value network", ["value", "critic"]), ("verifiable reward", ["verif", "program", "checker"]),
                 ("pass@k and a control", ["pass@", "control", "sft"])]),
    dict(id="tools", lessons=["12"], topic="tool use", then="q19_tool_mask",
         question="How would you fine-tune a model to call tools, and keep it safe?",
         answer="Describe each tool by a JSON schema taken from a typed, documented function, rendered by the "
                "chat template's tools argument. Train on whole conversations (question, the assistant's call, "
                "the tool's result, the final answer) with the loss on the assistant's turns only. At inference "
                "a loop parses each call, validates it against the schema, refuses what it should, returns "
                "errors as the tool's message and caps the number of calls. Measure valid calls and final "
                "accuracy before and after, also outside the training ranges.",
         figure="lesson 12, section 7 (before and after: valid calls and accuracy) and section 8 (outside the "
                "training ranges)",
         follow_up="What happens when the tool returns a wrong value?",
         follow_up_answer="The model passes it on: it was trained to trust the tool (lesson 12, section 9). "
                          "Check tool outputs where you can.",
         points=[("schema", ["schema", "json"]), ("loss on the assistant's turns", ["assistant", "mask", "-100"]),
                 ("validate and refuse", ["valid", "refuse", "reject", "error"]), ("a loop with a cap", ["loop", "max_calls", "limit", "cap on", "at most"])]),
    dict(id="evaluation", lessons=["13"], topic="evaluation", then="token_f1",
         question="How do you evaluate a fine-tuned model?",
         answer="A fixed held-out set, fixed prompts and decoding, one harness for every model. Exact match "
                "(after normalising) where one answer is right; token F1 or ROUGE-L for overlap, knowing they "
                "barely move for a wrong number; perplexity for fluency; an LLM judge with a rubric where no "
                "reference exists, validated on answers like the ones it will judge and asked in both orders. "
                "Every share with its interval, and paired tests between models.",
         figure="lesson 13, section 1 (five metrics on the same answers) and section 3 (position bias: one order "
                "against both)",
         follow_up="You compute token F1 with sets of words. What breaks?",
         follow_up_answer="Repeated words count once: 'high risk high' against 'high high low' shares 'high' "
                          "twice, a set counts it once. Count with multiplicity (Counter).",
         points=[("held-out, fixed harness", ["held-out", "held out", "harness", "fixed"]),
                 ("exact match", ["exact"]), ("overlap metrics' blind spot", ["f1", "rouge"]),
                 ("judge, validated, both orders", ["judge", "order", "position"]), ("intervals", ["interval", "paired"])]),
    dict(id="forgetting", lessons=["14"], topic="forgetting", then="q19_prevent_forgetting",
         question="How do you limit catastrophic forgetting?",
         answer="First measure it: the perplexity of held-out general text before, during and after training, "
                "beside the task score. Then the levers: a lower learning rate, a smaller rank, general data "
                "mixed in, fewer steps. Judge each next to the task score, since a remedy that stops learning "
                "also stops forgetting, and repeat it over seeds before you call it a rule.",
         figure="lesson 14, section 2 (the grid: general-text perplexity ratio beside held-out exact match)",
         follow_up="Does LoRA forget less than full fine-tuning?",
         follow_up_answer="Often, since it changes few directions, but not always: lesson 14's high learning "
                          "rate at rank 64 forgot. Measure it on your model.",
         points=[("measure general-text perplexity", ["perplexity", "general"]),
                 ("beside the task score", ["task", "score", "exact"]),
                 ("levers: learning rate, rank, data mix", ["learning rate", "rank", "mix", "replay"])]),
    dict(id="rag", lessons=["15"], topic="fine-tune vs RAG", then="q19_finetune_vs_prompting",
         question="Fine-tune, RAG, or prompt?",
         answer="Prompt first (zero- or few-shot): the cheapest try. RAG when the model needs facts that are "
                "fresh, citable or updated without training; it pays per query in prompt tokens and a "
                "retrieval. Fine-tune for how it answers: a format, a style, a behaviour that prompts do not "
                "make stick, and shorter prompts at serving. They combine: a fine-tuned reader over retrieved "
                "passages.",
         figure="lesson 15, section 5 (accuracy and cost per question type) and section 4 (freshness)",
         follow_up="The retriever finds the right passage, yet the answer is wrong. Now what?",
         follow_up_answer="The reader fails: measure retrieval (is the passage in the top k?) and reading "
                          "(accuracy given the right passage) apart, then fix the part that fails.",
         points=[("prompting first", ["prompt"]), ("RAG for facts, fresh", ["fresh", "fact", "cite", "citation"]),
                 ("fine-tune for behaviour, format", ["format", "behaviour", "behavior", "style"]),
                 ("cost per query", ["cost", "token", "latency"])]),
    dict(id="distributed", lessons=["16"], topic="distributed training", then="q19_zero3_gb",
         question="A full fine-tune does not fit one GPU. DDP, ZeRO or FSDP?",
         answer="DDP replicates weights, gradients and optimizer states on every GPU and splits only the batch: "
                "faster, not smaller. ZeRO-1, 2 and 3 shard the optimizer states, then the gradients, then the "
                "weights (FSDP's full shard is ZeRO-3), paying in communication. With LoRA the optimizer states "
                "are small and DDP often fits. Whatever the strategy, normalise the loss by the global count of "
                "trained tokens, not per rank.",
         figure="lesson 16, section 4 (memory per GPU for each strategy) and section 3 (the script on 1 process "
                "and on NPROC)",
         follow_up="Why can averaging each rank's mean loss train a different model than one GPU does?",
         follow_up_answer="Ranks hold different numbers of trained tokens (completion-only labels), so a token's "
                          "weight depends on its rank: sum the token losses and divide by the global count.",
         points=[("DDP replicates", ["replica", "copy", "replicat"]),
                 ("ZeRO stages shard", ["shard", "zero", "partition"]), ("FSDP = ZeRO-3", ["fsdp"]),
                 ("loss normalisation", ["normalis", "normaliz", "token count", "global"])]),
    dict(id="serving", lessons=["17"], topic="merging and serving", then="q19_merge_4bit",
         question="How do you ship a LoRA fine-tune?",
         answer="One task: merge into a 16-bit base and save it as a plain model, loadable without peft, at "
                "no inference cost. A QLoRA adapter is merged into the dequantised base, never into the 4-bit "
                "weights. Many tasks: one base with many adapters, an adapter per request in a mixed batch. For "
                "llama.cpp, export to GGUF (F16 or Q8_0) and compare logits or greedy answers with transformers "
                "before shipping.",
         figure="lesson 17, section 2 (logit differences of the right and the wrong merge), section 3 (a mixed "
                "batch against one adapter at a time) and section 5 (the GGUF file against the safetensors)",
         follow_up="How would you combine two task adapters into one?",
         follow_up_answer="Not by adding A's and B's: combine the updates B·A (a weighted sum, or TIES/DARE to "
                          "resolve sign conflicts and drop small entries), then measure both tasks (lesson 17, "
                          "section 4).",
         points=[("merge for one task", ["merge"]), ("dequantise before merging", ["dequant", "16-bit", "16 bit"]),
                 ("many adapters on one base", ["many adapters", "multi", "per request", "mixed", "adapter per"]),
                 ("GGUF / llama.cpp", ["gguf", "llama.cpp"]), ("check before shipping", ["compare", "logit", "check"])]),
    dict(id="decoding", lessons=["00", "11"], topic="decoding", then="top_p_probs",
         question="Explain temperature and top-p sampling. When do you use which?",
         answer="Temperature divides the logits before the softmax: below 1 sharpens towards the most likely "
                "token, above 1 flattens; greedy decoding is its limit at 0. Top-p keeps the smallest set of "
                "most likely tokens whose probabilities add up to at least p, renormalises them and samples: the "
                "tail is cut where the model is confident and kept where it is not. Greedy for exact-answer "
                "evaluation; sampling for pass@k and for varied text.",
         figure="lesson 11, section 2 (greedy accuracy against pass@k sampled at temperature 1) and lesson 00's "
                "exercise temperature_probs",
         follow_up="Top-k or top-p?",
         follow_up_answer="Top-k keeps a fixed number of tokens whatever the distribution; top-p adapts to it: "
                          "few tokens when the model is sure, many when it is not.",
         points=[("temperature divides the logits", ["divide", "logits", "sharpen", "flatten"]),
                 ("top-p: smallest set reaching p", ["smallest", "cumulative", "nucleus", "add up"]),
                 ("renormalise", ["renormal"]), ("greedy vs sampling", ["greedy", "pass@"])]),
]
