"""Lesson 19 (interview prep): quiz questions across the course, two code drills, and where each
answer is proven.

EXPLANATIONS maps each question to (where: the lesson and section that measures or derives the answer,
why: the reasoning). labkit.interview.quiz shows "where" after any answer and "why" once the answer is
right. Answers are stored hashed (labkit.check); the answer key is solutions/19_interview_prep_exercises.ipynb.
"""

from __future__ import annotations

import random

from labkit import evaluate
from labkit.check import Case, exercise, number, question

LESSON = "19"


# topic of each question, for the interview deck (labkit.interview.deck)
TOPICS = {
    'q19_which_rank': 'LoRA',
    'q19_prevent_forgetting': 'forgetting',
    'q19_finetune_vs_prompting': 'fine-tune vs RAG',
    'q19_lora_params_one_matrix': 'LoRA',
    'q19_lora_7b_r16': 'LoRA',
    'q19_lora_b_zero': 'LoRA',
    'q19_rslora_scale': 'LoRA',
    'q19_merge_latency': 'LoRA',
    'q19_nf4_65b_gb': 'QLoRA',
    'q19_double_quant': 'QLoRA',
    'q19_qlora_what_trains': 'QLoRA',
    'q19_full_ft_bytes': 'QLoRA',
    'q19_label_mask': 'SFT',
    'q19_chat_template': 'SFT',
    'q19_packing': 'SFT',
    'q19_bradley_terry': 'RLHF',
    'q19_kl_penalty': 'RLHF',
    'q19_dpo_removes': 'DPO',
    'q19_dpo_beta': 'DPO',
    'q19_perplexity': 'evaluation',
    'q19_wrong_value_metric': 'evaluation',
    'q19_rouge_l_value': 'evaluation',
    'q19_judge_position': 'evaluation',
    'q19_forgetting_data': 'forgetting',
    'q19_rag_freshness': 'fine-tune vs RAG',
    'q19_rag_cost': 'fine-tune vs RAG',
}

EXPLANATIONS = {
    'q19_which_rank': ('lesson 01 (the SVD view of a real update, the rank widget), lesson 02 (learning rate × rank, read honestly) and lesson 14 (the three usual remedies: rank 4 vs 64)',
        'Trainable parameters grow linearly with r, while quality saturates early; small ranks are the usual start, and whether a rank is enough is measured on held-out data, not assumed.'),
    'q19_prevent_forgetting': ('lesson 14 (the three usual remedies, measured: learning rate, rank and general data, next to the task score)',
        "One run of the grid forgot (high learning rate, rank 64, no general data); the same run with 10% general text mixed in kept general-text perplexity near x1 at the same exact match. The grid is one seed and one task: it shows what to measure (general-text perplexity before and after, beside the task score), not a recipe that holds everywhere."),
    'q19_finetune_vs_prompting': ('lesson 15 (accuracy and cost, per question type; freshness; the decision table)',
        'Fine-tuning changes HOW (formats, behaviour); RAG changes WHAT the model knows (facts, fresh and citable); prompting is the cheapest first try.'),
    'q19_lora_params_one_matrix': ('lesson 01 (the idea, and counting parameters exactly)',
        'A is r x d_in and B is d_out x r, so the count is r·(d_in + d_out).'),
    'q19_lora_7b_r16': ('lesson 01 (counting parameters exactly: the 7B example, on the meta device)',
        '32 layers x 2 matrices x r·(4096 + 4096). The often-quoted 4,194,304 is the r = 8 figure.'),
    'q19_lora_b_zero': ('lesson 01 (B starts at zero, so step 0 is the base model)',
        'With B = 0 the update is zero, training starts from the pretrained model exactly; A random keeps gradients for B non-zero.'),
    'q19_rslora_scale': ('lesson 01 (alpha/r, and rsLoRA)',
        'alpha/sqrt(r); plain LoRA would scale by alpha/r, four times less at this rank.'),
    'q19_merge_latency': ('lesson 01 (merging) and lesson 17 (what an adapter costs at inference)',
        "W + (alpha/r)·B·A is a single matrix of the original shape, so the merged model does exactly the base model's arithmetic; "
        "only an unmerged adapter adds products. Whether that shows in a stopwatch is a measurement: lesson 17 times the base, the "
        "merged and the unmerged model in turns and prints each time/base ratio with its interval."),
    'q19_nf4_65b_gb': ('lesson 05 (memory arithmetic: what fits where)',
        'Four bits are half a byte per weight: parameters x 0.5 bytes.'),
    'q19_double_quant': ('lesson 04 (blockwise absmax, and double quantisation)',
        'Each block of 64 weights has a float32 absmax; double quantisation stores those constants in 8 bits (blocks of 256), saving about 0.37 bits per weight.'),
    'q19_qlora_what_trains': ('lesson 05 (loading a model in 4 bits, and training the 4-bit model)',
        'Gradients flow through the dequantised base weights into the adapters; only the adapters are updated.'),
    'q19_full_ft_bytes': ('lesson 05 (memory arithmetic, labkit.memory.estimate_memory) and lesson 16 (memory per GPU: DDP, ZeRO, FSDP)',
        "fp32 weight, fp32 gradient, and Adam's first and second moments, 4 bytes each."),
    'q19_label_mask': ('lesson 06 (labels: -100 on the prompt; the token-mask viewer)',
        "PyTorch's cross-entropy skips -100; the model learns to answer, not to reproduce the question."),
    'q19_chat_template': ("lesson 06 (instruction data and the chat template)",
        'The fine-tuned behaviour is conditioned on the exact special tokens and layout of the training prompts.'),
    'q19_packing': ('lesson 06 (packing)',
        'Packing fills each row with real tokens; the attention or the labels must keep examples from reading each other.'),
    'q19_bradley_terry': ('lesson 08 (the Bradley-Terry reward model)',
        'P = sigmoid(r_chosen - r_rejected); the reward loss is -log of it.'),
    'q19_kl_penalty': ('lesson 08 (reward hacking, and what the KL penalty does)',
        'Without it the policy finds texts the reward model over-scores (reward hacking) and forgets how to write.'),
    'q19_dpo_removes': ('lesson 09 (from the RLHF objective to the DPO loss)',
        'DPO optimises the policy directly on preference pairs, with an implicit reward beta·log(pi_theta/pi_ref); the reference model stays.'),
    'q19_dpo_beta': ('lesson 09 (what beta does)',
        "beta plays the role of the KL penalty's weight: a larger beta makes deviations from pi_ref more costly."),
    'q19_perplexity': ('lesson 13 (five metrics, and what each one misses)',
        'Perplexity is exp of the mean NLL per token.'),
    'q19_wrong_value_metric': ('lesson 13 (five metrics, and what each one misses)',
        'Overlap metrics still give about 0.9 for one wrong token; only exact match (or a check of the value) catches it.'),
    'q19_rouge_l_value': ('lesson 13 (five metrics: ROUGE-L from its definition) and the drill rouge_l_f1 in the exercises',
        'LCS = 2 words; precision = 2/4, recall = 2/2; F1 is their harmonic mean.'),
    'q19_judge_position': ('lesson 13 (win rates and judges: position bias, made visible)',
        'Swapping cancels a constant first-position bonus; evaluate.pairwise_win_rate does it and measures the bias.'),
    'q19_forgetting_data': ('lesson 14 (evaluating during training: general-text perplexity beside the task score)',
        'Forgetting is about what the task data does not contain; held-out, so the measure is not memorisation.'),
    'q19_rag_freshness': ('lesson 15 (freshness: facts change)',
        'RAG reads the collection at query time; a fine-tuned model holds facts in its weights until it is retrained.'),
    'q19_rag_cost': ('lesson 15 (accuracy and cost, per question type: tokens per query, latency)',
        'The passage goes into every prompt; fine-tuning pays up front (training) instead.'),
}

question(id='q19_which_rank', lesson=LESSON, kind="choice", answer_hash="6275a3a4f5c756ee443b174b",
         text='Interview: which LoRA rank would you start with for instruction tuning, and how would you choose?',
         choices=('A small rank (8-16, alpha about 2r), raised if a held-out metric shows the adapter underfits',
                  'The full rank of the weight matrix, so that the adapter can express any update the task needs',
                  'The largest rank that fits in memory, since more rank can only fit the data better'),
         feedback={'b': 'a full-rank adapter trains r·(d_in + d_out) numbers, twice the matrix itself: full fine-tuning '
                        'at a higher price (lesson 01 counts it), and most tasks do not need it.',
                   'c': 'fitting the training data better is not the goal: the held-out score decides, and lesson 14\'s '
                        'one run that forgot badly had rank 64 (with a high learning rate and no general data).'})

question(id='q19_prevent_forgetting', lesson=LESSON, kind="choice", answer_hash="0ba9667d9725e1ffc83f3454",
         text="Lesson 14's grid trains LoRA on one task at two learning rates, two ranks, with and without 10% general "
              "text. General-text perplexity rose by a factor of hundreds in one run only (the high learning rate, "
              "rank 64, no general text). Which claim does the grid support?",
         choices=('A lower learning rate prevents forgetting, and costs the task nothing',
                  'Mixing in general text kept that run near its old perplexity, at the same task score',
                  'Full fine-tuning forgets less than LoRA, because no adapter distorts the pretrained weights'),
         feedback={'a': 'the grid\'s low-learning-rate runs did not forget, but at rank 4 the low rate also learned '
                        'little of the task (read its exact-match column): a remedy is judged next to the task score.',
                   'c': 'the grid has no full fine-tune at all, and full fine-tuning changes every weight: nothing in '
                        'lesson 14 supports it as a remedy.'})

question(id='q19_finetune_vs_prompting', lesson=LESSON, kind="choice", answer_hash="39c4458d25f510b57b54cf71",
         text='Interview: when is fine-tuning the better choice than prompting or RAG?',
         choices=('When the model must know facts that change every week, such as prices',
                  'When the model must cite the document behind each of its answers',
                  'When answers need a format or behaviour that prompts do not make stick'),
         feedback={'a': "facts that change are RAG's case: a fine-tuned model keeps the old value in its weights until "
                        "it is retrained (lesson 15's freshness test).",
                   'b': 'citing needs the document at answer time, which retrieval provides; weights cannot point to '
                        'their source.'})

question(id='q19_lora_params_one_matrix', lesson=LESSON, kind="number", rtol=0.001, answer_hash="1545dbbbe15fbbb5b0d86007",
         text='LoRA with r = 8 on one 4096 x 4096 weight matrix: how many trainable parameters?' + " (0.1% tolerance)")

question(id='q19_lora_7b_r16', lesson=LESSON, kind="number", rtol=0.001, answer_hash="095baf826e8fea76310ef51d",
         text='Llama-2-7B (32 layers, hidden size 4096), LoRA with r = 16 on q_proj and v_proj only: how many trainable parameters?' + " (0.1% tolerance)")

question(id='q19_lora_b_zero', lesson=LESSON, kind="choice", answer_hash="ed32d24a97b7a792b1f5a074",
         text='Why does LoRA initialise B to zeros (and A at random)?',
         choices=('So that B·A = 0: the adapted model is the base model at step 0',
                  'To save memory: a zero matrix costs nothing until the first step',
                  'To keep the update small all through training: B stays near zero'),
         feedback={'b': 'a zero B is an ordinary dense tensor of the same size; nothing is saved. Ask what B·A equals '
                        'at step 0.',
                   'c': "B moves from the first step (its gradient is not zero, because A is random): zero is where it "
                        "starts, not where it stays."})

question(id='q19_rslora_scale', lesson=LESSON, kind="number", rtol=0.01, answer_hash="78ec1cc9b2bab766dca929d6",
         text='rsLoRA scales the update by alpha/sqrt(r) instead of alpha/r. With alpha = 16 and r = 64, what is the scale?' + " (1.0% tolerance)")

question(id='q19_merge_latency', lesson=LESSON, kind="choice", answer_hash="e3036e3fd929b29003283c5d",
         text='You merge a trained LoRA adapter into the base weights. Compared with the base model, the work of a forward pass is:',
         choices=('more, by the two extra thin matrix products per adapted layer',
                  'the same: the merged weight is one matrix of the original shape',
                  'less, because a merged model skips the base weights it replaced'),
         feedback={'a': 'those products exist only while the adapter is unmerged; merged, W + (alpha/r)·B·A is one '
                        'matrix (lesson 17 times the three).',
                   'c': 'merging adds the update to W; the shapes and the dtype stay, so the work is exactly the base '
                        "model's."})

question(id='q19_nf4_65b_gb', lesson=LESSON, kind="number", rtol=0.02, answer_hash="64715afd913eb103b1fc8542",
         text='A 65-billion-parameter model stored in 4-bit NF4 (ignore the quantisation constants): how many GB (1e9 bytes) do its weights take?' + " (2.0% tolerance)")

question(id='q19_double_quant', lesson=LESSON, kind="choice", answer_hash="4eb2b82a0e18d96ee31ba4f7",
         text='In QLoRA, what does double quantisation quantise?',
         choices=('The weights a second time, from 4 bits down to 2',
                  'The optimizer states, to 8 bits',
                  'The absmax constants, one per block of 64 weights'),
         feedback={'a': 'the weights stay 4-bit NF4; what is quantised a second time is stored once per block.',
                   'b': '8-bit optimizer states are a different trick; double quantisation is about the 4-bit '
                        "format's own constants (lesson 04)."})

question(id='q19_qlora_what_trains', lesson=LESSON, kind="choice", answer_hash="e0a03bcfe223b92dc704023b",
         text='In QLoRA, which parameters are stored in 4 bits and which ones train?',
         choices=('The frozen base weights are 4-bit; the LoRA adapters train in 16/32-bit',
                  'Everything is stored in 4 bits, and every weight trains, adapters included',
                  'The adapters are 4-bit; the base weights train in 16-bit'),
         feedback={'b': 'a gradient step on a 4-bit weight is mostly smaller than one NF4 level and rounds away: the 4-bit '
                        'base stays frozen and only the adapters train.',
                   'c': 'the other way round: the big frozen matrices are the ones worth compressing, the small adapters '
                        'are what trains.'})

question(id='q19_full_ft_bytes', lesson=LESSON, kind="number", rtol=0.01, answer_hash="cf0609bb3336084fb7f34d15",
         text='Full fine-tuning in fp32 with AdamW: bytes per parameter for weights + gradients + the two Adam states (ignore activations)?' + " (1.0% tolerance)")

question(id='q19_label_mask', lesson=LESSON, kind="choice", answer_hash="a5a118a68440069d6b03c657",
         text="In completion-only SFT, what label do the prompt's tokens get?",
         choices=('0, the id the loss skips', '-100, so the loss ignores them', "their own token ids, like the answer's"),
         feedback={'a': '0 is an ordinary token id: the loss would train the model to predict it at every prompt '
                        "position. PyTorch's cross-entropy skips ignore_index, which is -100.",
                   'c': 'that trains on the prompt too: the model learns to reproduce questions as well as to answer them '
                        '(lesson 06 compares the two losses).'})

question(id='q19_chat_template', lesson=LESSON, kind="choice", answer_hash="c7915b33d3f543e792d6823b",
         text='Why must the chat template at inference be the one used in SFT?',
         choices=('It need not be: the model reads the content, not the turn markers',
                  'Only the system prompt has to match; the turn markers can change',
                  'Otherwise the model sees a format it never trained on'),
         feedback={'a': 'the model was trained with the markers: it learned that its answer follows the generation '
                        'prompt and ends with the turn end. Other markers are text it never saw there.',
                   'b': 'the turn markers are what tell the fine-tuned model where its answer begins and ends; they '
                        'matter more than the system prompt.'})

question(id='q19_packing', lesson=LESSON, kind="choice", answer_hash="e6a0c4c76c73c9c46b6faf64",
         text='What is packing in SFT?',
         choices=('Concatenating short examples into full-length rows, so no compute goes to padding',
                  'Padding every example to the longest one, so the rows stack into one tensor',
                  'Putting each prompt and its answer in separate rows, so the loss sees answers only'),
         feedback={'b': 'that is padding, the waste packing removes.',
                   'c': 'a prompt and its answer stay in one row (the prompt masked with -100); packing puts several '
                        'whole examples in one row.'})

question(id='q19_bradley_terry', lesson=LESSON, kind="number", rtol=0.01, answer_hash="73ecd4d1f422a80c0c45818e",
         text='A reward model scores the chosen answer 2.0 and the rejected one 0.0. Under Bradley-Terry, what is P(chosen preferred)?' + " (1.0% tolerance)")

question(id='q19_kl_penalty', lesson=LESSON, kind="choice", answer_hash="cc33a1ae307dcc3547b38217",
         text='Why does RLHF penalise the KL divergence between the policy and the reference (SFT) model?',
         choices=('To keep the reward model close to the SFT model while the policy trains on it',
                  'To keep the policy near the SFT model, so it cannot drift into exploiting the reward',
                  'To make the answers more diverse, as an entropy bonus in the reward does'),
         feedback={'a': 'the reward model is frozen during PPO; the KL term compares the policy with the reference '
                        'model.',
                   'c': "an entropy bonus rewards spread for its own sake; the KL term pulls towards the reference "
                        "model's distribution, wherever that is."})

question(id='q19_dpo_removes', lesson=LESSON, kind="choice", answer_hash="637a3ef95b21081587495dce",
         text='What does DPO do without, compared with PPO-based RLHF?',
         choices=('The KL-regularised objective: DPO maximises the reward alone',
                  'The reference model: DPO needs only the policy',
                  'A separately trained reward model and the RL sampling loop'),
         feedback={'a': 'DPO is derived from that same KL-regularised objective, and beta is its KL weight (lesson 09 '
                        'derives it).',
                   'b': "DPO keeps pi_ref: its implicit reward is beta·log(pi_theta/pi_ref), so the reference model's "
                        'log-probabilities are in every term of the loss.'})

question(id='q19_dpo_beta', lesson=LESSON, kind="choice", answer_hash="20e83f14f82c37679e74aa3d",
         text='In DPO, a larger beta...',
         choices=('keeps the policy closer to the reference model',
                  'lets the policy move further from the reference model',
                  'weights the chosen answers more than the rejected ones'),
         feedback={'b': 'the other way round: beta weighs the KL term of the objective DPO comes from, so a larger beta '
                        'makes moving away costlier.',
                   'c': 'beta multiplies both log-ratios, chosen and rejected alike: it sets how sharply the loss reacts '
                        'to their difference, not a preference for one side.'})

question(id='q19_perplexity', lesson=LESSON, kind="number", rtol=0.01, answer_hash="a432df15161407d45b5a9e98",
         text='The mean negative log-likelihood on held-out text is 1.5 nats per token. What is the perplexity?' + " (1.0% tolerance)")

question(id='q19_wrong_value_metric', lesson=LESSON, kind="choice", answer_hash="14ad29853ce82ecd0972dad0",
         text='An answer restates the reference sentence but with a wrong ratio (45% instead of 30%). Which metric drops to zero?',
         choices=('ROUGE-L', 'exact match', 'token F1'),
         feedback={'a': 'ROUGE-L counts the longest common subsequence: every other word still matches, so it stays '
                        'high (lesson 13\'s metrics table).',
                   'c': 'token F1 counts shared words: one wrong token among many barely moves it.'})

question(id='q19_rouge_l_value', lesson=LESSON, kind="number", rtol=0.01, answer_hash="f06ba642cf460d33c0aa9e4b",
         text="ROUGE-L F1 of the prediction 'the risk is high' against the reference 'Risk: high' (lower-cased words, no stemming)?" + " (1.0% tolerance)")

question(id='q19_judge_position', lesson=LESSON, kind="choice", answer_hash="d5b001e6b71c476ee52db190",
         text='A pairwise LLM judge prefers whichever answer it sees first. What is the standard fix?',
         choices=("Always show the candidate model's answer first, so every pair gets the same bias",
                  'Sample the judge at temperature 0, so its verdict cannot depend on chance',
                  'Ask in both orders and average (and report how often the orders disagree)'),
         feedback={'a': "then the bias favours the candidate in every pair: a constant bonus on one side, not a fix.",
                   'b': 'temperature 0 makes the judge deterministic, not unbiased: it then prefers the first answer '
                        'every time its bias tips the scale.'})

question(id='q19_forgetting_data', lesson=LESSON, kind="choice", answer_hash="f1e1040ca938a46a2d24df89",
         text='On which data do you measure catastrophic forgetting?',
         choices=('Held-out general text the fine-tuning data does not cover',
                  'The SFT training set, whose loss shows what the model still knows',
                  "The task's validation set, held out from training"),
         feedback={'b': 'the training set shows what the model learned on the task, the opposite of what it may have '
                        'lost elsewhere.',
                   'c': 'that measures how well the task was learned; forgetting is about what the task data does not '
                        'contain.'})

question(id='q19_rag_freshness', lesson=LESSON, kind="choice", answer_hash="201d99a248ecd473025a4a42",
         text='A fact in the document collection changes today. Which system gives the new answer without retraining?',
         choices=('The fine-tuned model, since it learned the collection',
                  'RAG: retrieval reads the updated document',
                  'Both: the fine-tuned model generalises to the new value'),
         feedback={'a': "it learned the collection as it was: the old value stays in its weights until it is retrained "
                        "(lesson 15's freshness test).",
                   'c': 'generalising is not knowing: nothing in the weights has seen today\'s change.'})

question(id='q19_rag_cost', lesson=LESSON, kind="choice", answer_hash="e8b56aaf1084f7f7ce66a18d",
         text='Compared with a fine-tuned model, what does RAG cost per query?',
         choices=('Fewer tokens, since the answer is read off the passage',
                  'Nothing extra once the index is built',
                  'More prompt tokens (the passage) and a retrieval step'),
         feedback={'a': 'the retrieved passage is pasted into every prompt: more tokens, not fewer.',
                   'b': "every query still pays for the retrieval and for reading the passage (lesson 15's table: "
                        "tokens per query and latency)."})


# ---------------------------------------------------------------------------------------------
# Code drills: token F1 and ROUGE-L F1 (lesson 13 §1)

_WORDS = ["the", "loan", "risk", "is", "high", "low", "Risk:", "ratio", "30%", "Linda", "Garcia", "$1,500", "paid",
          "a", "memo", "payslip"]


def _sentence(rng: random.Random, n_max: int = 10) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, n_max)))


def _text_pairs(rng: random.Random, n: int) -> list[Case]:
    return [Case({"prediction": _sentence(rng), "reference": _sentence(rng)}) for _ in range(n)]


_TOKENS_HINT = "lower-case, keep runs of letters and digits as tokens (re.sub(r'[^a-z0-9]+', ' ', s.lower()).split())"

exercise(id="token_f1", lesson=LESSON, title="Token F1 (SQuAD-style)", signature="token_f1(prediction, reference)",
         reference=evaluate.token_f1,
         public=lambda: [Case({"prediction": "Risk: high", "reference": "risk: HIGH"}, "same words, other case",
                              hint=_TOKENS_HINT),
                         Case({"prediction": "the ratio is 30", "reference": "ratio 30 percent"}, "partial overlap",
                              hint="precision = common / len(prediction), recall = common / len(reference)"),
                         Case({"prediction": "a a a", "reference": "a"}, "a repeated word",
                              hint="count common tokens with multiplicity: Counter(p) & Counter(r)"),
                         Case({"prediction": "high risk high", "reference": "high high low"},
                              "a word repeated on both sides",
                              hint="'high' is common twice: count with multiplicity, Counter(p) & Counter(r), "
                                   "not set(p) & set(r)"),
                         Case({"prediction": "low", "reference": "high"}, "nothing in common",
                              hint="no common token: F1 is 0")],
         hidden=lambda rng: _text_pairs(rng, 8),
         compare=number(rtol=1e-9),
         hint="F1 = 2PR / (P + R) over shared tokens (with counts); " + _TOKENS_HINT)

exercise(id="rouge_l_f1", lesson=LESSON, title="ROUGE-L F1 from the longest common subsequence",
         signature="rouge_l_f1(prediction, reference)",
         reference=lambda prediction, reference: evaluate.rouge_l(prediction, reference)["f1"],
         public=lambda: [Case({"prediction": "high risk", "reference": "Risk: high"}, "order matters",
                              hint="the longest common SUBSEQUENCE keeps order: here it is one word"),
                         Case({"prediction": "the loan risk is high", "reference": "risk high"}, "words in between",
                              hint="a subsequence may skip words"),
                         Case({"prediction": "memo", "reference": "payslip"}, "nothing in common",
                              hint="LCS 0: F1 is 0")],
         hidden=lambda rng: _text_pairs(rng, 8),
         compare=number(rtol=1e-9),
         hint="LCS by dynamic programming; P = LCS / len(prediction), R = LCS / len(reference), F1 = 2PR/(P+R); "
              + _TOKENS_HINT)
