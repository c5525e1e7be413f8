"""Lesson 18 (the clinic): for each broken run, a diagnosis quiz (q18_...) and the fix as an exercise
(clinic_...), graded against labkit.lessons.clinic and clinic_beyond."""

from __future__ import annotations

import functools
import math
import random

import torch

from labkit import chat, models, quant
from labkit.check import Case, exercise, number, question, tensor, text
from labkit.check.compare import type_name
from labkit.lessons import clinic, clinic_beyond

LESSON = "18"
IGNORE = -100


def _equal(what: str):
    """A comparator for plain values (lists of ints, bools, strings) that must be equal, without showing them."""
    def compare(got, exp, case=None):
        if type(got) is not type(exp) and not (isinstance(got, (list, tuple)) and isinstance(exp, (list, tuple))):
            return f"returned {type_name(got)}; expected {what}"
        if isinstance(exp, (list, tuple)):
            if len(got) != len(exp):
                return f"returned {len(got)} items, not the right number ({what})"
            i = next((k for k, (a, b) in enumerate(zip(got, exp)) if a != b or type(a) is not type(b)), None)
            return None if i is None else f"item {i} is not right ({what})"
        return None if got == exp else f"not right ({what})"
    return compare


# --------------------------------------------------------------------------------------------- case 1


def _labels_row(rng, stops, has_stop):
    row = [IGNORE] * rng.randint(1, 6) + [rng.randrange(10, 300) for _ in range(rng.randint(3, 20))]
    if has_stop:
        row.insert(len(row) - rng.randint(0, 2), rng.choice(stops))
    return row


def _stop_case(rng):
    stops = rng.sample(range(0, 6), rng.randint(1, 3))
    return Case({"labels": [_labels_row(rng, stops, rng.random() < 0.5) for _ in range(rng.randint(1, 8))],
                 "stop_ids": stops})


exercise(id="clinic_untrained_stop", lesson=LESSON, title="Find the examples that never train a stop token",
         signature="untrained_stop(labels, stop_ids)",
         reference=clinic.untrained_stop,
         public=lambda: [Case({"labels": [[IGNORE, IGNORE, 50, 51, 2], [IGNORE, 50, 51, 52]], "stop_ids": [2]},
                              "the second example was cut before its turn end"),
                         Case({"labels": [[IGNORE, 2, 60], [IGNORE, 60, 0]], "stop_ids": [2, 0]},
                              "two stop ids", hint="any stop id counts; a stop token in the prompt has label -100")],
         hidden=lambda rng: [_stop_case(rng) for _ in range(6)],
         compare=_equal("the indices of the examples without a trained stop token, increasing"),
         hint="for each row of labels: is any label one of stop_ids? keep the index of the rows where none is")


# --------------------------------------------------------------------------------------------- case 2


@functools.lru_cache(maxsize=1)
def _tokenizer():
    return models.load_tokenizer("bundled")


def _question(rng):
    words = ("Rate", "the", "risk", "of", "this", "loan", "income", "$4,200", "debts", "What", "was", "total?")
    return " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))


exercise(id="clinic_serving_prompt", lesson=LESSON, title="Serve with the prompt the model was trained on",
         signature="serving_prompt(question)",
         reference=lambda question: chat.render_prompt(_tokenizer(), question),
         public=lambda: [Case({"question": "Rate the risk of this loan as low, medium or high."},
                              "a question", hint="the training prompts ended where the assistant starts to write")],
         hidden=lambda rng: [Case({"question": _question(rng)}) for _ in range(4)],
         compare=text(),
         hint="the bundled model's tok.apply_chat_template([{'role': 'user', 'content': question}], tokenize=False, "
              "and one more argument")


# --------------------------------------------------------------------------------------------- case 3


def _pad_case(rng, pad):
    rows = [[rng.randrange(6, 300) for _ in range(rng.randint(1, 9))] + [pad] for _ in range(rng.randint(1, 4))]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return Case({"input_ids": ids, "attention_mask": mask})


exercise(id="clinic_pad_labels", lesson=LESSON, title="Labels that keep the EOS when pad = EOS",
         signature="lm_labels(input_ids, attention_mask)",
         reference=clinic.lm_labels,
         public=lambda: [Case({"input_ids": torch.tensor([[7, 8, 0, 0], [7, 8, 9, 0]]),
                               "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])},
                              "pad id 0 is also the EOS that ends each row",
                              hint="a 0 under attention 1 is a real EOS: it keeps its label")],
         hidden=lambda rng: [_pad_case(rng, rng.choice([0, 1, 2])) for _ in range(5)],
         compare=tensor(integer=True),
         hint="a copy of input_ids with -100 where attention_mask is 0; never compare ids with the pad id")


# --------------------------------------------------------------------------------------------- case 4

_LLAMA = [f"model.layers.{i}.{part}" for i in range(2) for part in
          ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj")]


def _targets_case(rng):
    real = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]
    picked = rng.sample(real, rng.randint(1, 4))
    return Case({"module_names": [""] + _LLAMA, "target_modules":
                 [clinic.misspell(t) if rng.random() < 0.4 else t for t in picked] + (["proj"] if rng.random() < 0.3 else [])})


exercise(id="clinic_unmatched_targets", lesson=LESSON, title="Target modules that match nothing",
         signature="unmatched_targets(module_names, target_modules)",
         reference=clinic.unmatched_targets,
         public=lambda: [Case({"module_names": _LLAMA, "target_modules": ["q_proj", "v_prj"]}, "a typo beside a valid name"),
                         Case({"module_names": _LLAMA, "target_modules": ["proj", "self_attn.v_proj"]},
                              "a part of a name, and a dotted suffix",
                              hint="peft matches a whole name or a suffix after a dot: 'proj' matches nothing")],
         hidden=lambda rng: [_targets_case(rng) for _ in range(6)],
         compare=_equal("the targets that match no module, in the order given"),
         hint="a target matches a module name that equals it or ends with '.' + target")


# --------------------------------------------------------------------------------------------- case 5


def _masked_case(rng):
    rows = []
    for _ in range(rng.randint(1, 6)):
        n = rng.randint(2, 8)
        row = [IGNORE] * n
        if rng.random() < 0.6:
            row[rng.randrange(n)] = rng.randrange(3, 99)
        rows.append(row)
    width = max(map(len, rows))
    return Case({"labels": torch.tensor([r + [IGNORE] * (width - len(r)) for r in rows])})


exercise(id="clinic_supervised_rows", lesson=LESSON, title="Drop the rows with nothing to learn",
         signature="supervised_rows(labels)",
         reference=clinic.supervised_rows,
         public=lambda: [Case({"labels": torch.tensor([[IGNORE, 4, 5], [IGNORE, IGNORE, IGNORE]])}, "one empty row"),
                         Case({"labels": torch.tensor([[IGNORE, IGNORE], [IGNORE, IGNORE]])}, "every row empty",
                              hint="no row to keep: an empty list")],
         hidden=lambda rng: [_masked_case(rng) for _ in range(6)],
         compare=_equal("the indices of the rows with at least one label that is not -100"),
         hint="a row is kept when any of its labels is not -100")


# --------------------------------------------------------------------------------------------- case 6


def _run(rng, diverge):
    x, out = rng.uniform(4, 8), []
    for i in range(rng.randint(3, 10)):
        out.append(x)
        x = x * rng.uniform(0.7, 0.98)
    if diverge:
        k = rng.randrange(1, len(out))
        out[k] = rng.choice([math.inf, out[k - 1] * rng.uniform(2.5, 4)])
    return out


def _lr_case(rng):
    lrs = sorted(rng.sample([1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2, 1e-1], rng.randint(2, 5)))
    cut = rng.randrange(1, len(lrs))
    return Case({"runs": {lr: _run(rng, i >= cut) for i, lr in enumerate(lrs)}})


exercise(id="clinic_safe_lr", lesson=LESSON, title="Pick the learning rate from a short sweep",
         signature="safe_lr(runs)",
         reference=clinic.safe_lr,
         public=lambda: [Case({"runs": {1e-1: [6.2, 12.8, 8.8, 13.6], 2e-3: [6.2, 5.5, 4.7, 3.8]}},
                              "one run jumps", hint="a loss above twice the lowest before it has diverged"),
                         Case({"runs": {1e-3: [5.0, 4.0, 3.0], 1e-2: [5.0, float("inf"), 2.0], 3e-4: [5.0, 4.8, 4.5]}},
                              "an infinite loss, then a finite one", hint="a loss that is not finite (inf, NaN) means the run diverged")],
         hidden=lambda rng: [_lr_case(rng) for _ in range(6)],
         compare=number(),
         hint="clinic's rule: a run diverged at its first loss that is not finite or above 2x the lowest loss "
              "before it; keep the runs that never did and return the largest of their learning rates")


# --------------------------------------------------------------------------------------------- case 7


def _merge_case(rng, out_f, in_f, r):
    g = torch.Generator().manual_seed(rng.randrange(10**6))
    codes, absmax = quant.quantize_nf4(torch.randn(out_f, in_f, generator=g) * 0.05)
    return Case({"codes": codes, "absmax": absmax, "shape": (out_f, in_f),
                 "A": torch.randn(r, in_f, generator=g) * 0.1, "B": torch.randn(out_f, r, generator=g) * 0.01,
                 "scaling": rng.choice([0.5, 1.0, 2.0])})


exercise(id="clinic_merge_4bit", lesson=LESSON, title="Merge a QLoRA adapter without quantising again",
         signature="merge_dequantized(codes, absmax, shape, A, B, scaling)",
         reference=clinic_beyond.merge_dequantized,
         public=lambda: [_merge_case(random.Random(1), 8, 64, 2)],
         hidden=lambda rng: [_merge_case(rng, rng.choice([4, 16]), rng.choice([64, 128]), rng.choice([1, 4, 8]))
                             for _ in range(4)],
         compare=tensor(rtol=1e-5, atol=1e-6),
         hint="labkit.quant.dequantize_nf4(codes, absmax, shape) + scaling * B @ A, returned as it is: no second "
              "quantize_nf4")


# --------------------------------------------------------------------------------------------- case 8


def _dpo_kwargs(got, exp, case=None):
    if not isinstance(got, dict):
        return f"returned {type_name(got)}; expected a dict of DPOConfig arguments"
    if set(got) != set(exp):
        return "the keys are not right: DPOConfig takes loss_type and loss_weights for this"
    if list(got["loss_type"]) != exp["loss_type"]:
        return "loss_type is not right: DPO's sigmoid loss and the SFT term, in that order"
    w = got["loss_weights"]
    if len(w) != 2 or not all(math.isclose(float(a), b, abs_tol=1e-9) for a, b in zip(w, exp["loss_weights"])):
        return "loss_weights is not right: one weight per loss type"
    return None


exercise(id="clinic_dpo_config", lesson=LESSON, title="DPO with an SFT term, as a DPOConfig",
         signature="dpo_fix_kwargs(sft_weight)",
         reference=clinic_beyond.dpo_fix_kwargs,
         public=lambda: [Case({"sft_weight": 1.0}, "weight 1")],
         hidden=lambda rng: [Case({"sft_weight": rng.choice([0.2, 0.5, 2.0, 3.0])}) for _ in range(3)],
         compare=_dpo_kwargs,
         hint="trl's DPOConfig sums several losses: loss_type=[...] with loss_weights=[...] (the pair loss first)")


# --------------------------------------------------------------------------------------------- case 9


def _groups_case(rng):
    g = rng.choice([2, 4, 8])
    out = []
    for _ in range(rng.randint(1, 5)):
        out += [rng.choice([0.0, 1.0])] * g if rng.random() < 0.5 else [rng.choice([0.0, 0.5, 1.0]) for _ in range(g)]
    return Case({"rewards": out, "group_size": g})


exercise(id="clinic_informative_groups", lesson=LESSON, title="Keep the GRPO groups that carry a signal",
         signature="informative_groups(rewards, group_size)",
         reference=clinic_beyond.informative_groups,
         public=lambda: [Case({"rewards": [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0], "group_size": 4},
                              "one group all right, one mixed")],
         hidden=lambda rng: [_groups_case(rng) for _ in range(6)],
         compare=_equal("one bool per group: do its rewards differ?"),
         hint="consecutive groups of group_size rewards; a group informs when its rewards are not all equal")


# --------------------------------------------------------------------------------------------- case 10

_WORDS = ("loan", "risk", "income", "debts", "ratio", "the", "is", "of", "monthly", "Linda", "Garcia", "500")


def _sentence(rng, lo=4, hi=16):
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _leak_case(rng):
    train = [_sentence(rng) for _ in range(rng.randint(1, 6))]
    test = [rng.choice(train) if rng.random() < 0.4 else _sentence(rng) for _ in range(rng.randint(1, 6))]
    return Case({"test_texts": test, "train_texts": train, "n": rng.choice([2, 3, 4]),
                 "threshold": rng.choice([0.5, 0.8, 0.95])})


exercise(id="clinic_decontaminate", lesson=LESSON, title="Decontaminate a test set",
         signature="decontaminate(test_texts, train_texts, n, threshold)",
         reference=clinic_beyond.decontaminate,
         public=lambda: [Case({"test_texts": ["the ratio of debts to income is 20", "a new question about a loan"],
                               "train_texts": ["the ratio of debts to income is 20"], "n": 3, "threshold": 0.95},
                              "a copied test row")],
         hidden=lambda rng: [_leak_case(rng) for _ in range(6)],
         compare=_equal("the indices of the test rows to keep, increasing"),
         hint="labkit.dataprep.ngram_overlap(test_texts, train_texts, n) gives each row's share; keep those below "
              "threshold")


# --------------------------------------------------------------------------------------------- case 11


def _rating_case(rng):
    levels = ("low", "medium", "high")
    gold = f"Risk: {rng.choice(levels)}"
    shape = rng.randrange(4)
    said = [f"Risk: {rng.choice(levels)}" for _ in range(rng.randint(1, 3))]
    completion = {0: said[0], 1: " ".join(said), 2: f"The answer is {said[0].upper()}.", 3: "I don't know."}[shape]
    return Case({"completion": completion, "gold": gold})


exercise(id="clinic_verify_rating", lesson=LESSON, title="A reward that a list of ratings cannot game",
         signature="verify_rating(completion, gold)",
         reference=clinic_beyond.verify_rating,
         public=lambda: [Case({"completion": "Risk: high", "gold": "Risk: high"}, "the bare answer"),
                         Case({"completion": "Risk: low Risk: medium Risk: high", "gold": "Risk: high"},
                              "every rating listed", hint="a list of ratings states no answer: exactly one rating"),
                         Case({"completion": "risk: HIGH", "gold": "Risk: high"}, "another case",
                              hint="compare ratings case-insensitively")],
         hidden=lambda rng: [_rating_case(rng) for _ in range(8)],
         compare=number(),
         hint="find every 'Risk: low|medium|high' (re.findall, re.IGNORECASE); pay 1.0 only for exactly one, equal to "
              "the gold's")


# --------------------------------------------------------------------------------------------- the diagnoses

question(id="q18_turn_end", lesson=LESSON, kind="choice", answer_hash="2a43a706594e9b0f84f60a69",
         text="Case 1. After SFT the answers start in the right words but never end: every one runs on to "
              "max_new_tokens, and the training loss fell as usual. What went wrong?",
         choices=("max_length cut every example before its turn end, so no stop token was ever trained on",
                  "the learning rate was too low to learn a token that occurs only once in each example",
                  "greedy decoding loops; the model learned to stop and needs a repetition penalty"),
         feedback={"b": "the fixed run used the same learning rate and steps and learned to stop; one token an "
                        "example is plenty when it is in the labels.",
                   "c": "it never learned to stop: the labels of the broken run trained no stop token at all, so "
                        "no decoding setting can find one."})

question(id="q18_template", lesson=LESSON, kind="choice", answer_hash="00ef40dccc93f13813a4c2f2",
         text="Case 2. The same SFT model scores well in the training notebook, but the serving code's answers are "
              "empty or wrong. The serving prompt is apply_chat_template(messages, tokenize=False). Why?",
         choices=("the adapter was lost when the model was exported, so the server runs the base model",
                  "the server samples with a temperature; answers must be decoded greedily to match",
                  "the prompt stops before the assistant's opening that every training prompt ended with"),
         feedback={"a": "both rows of the case ran the very same model object in memory: only the prompt "
                        "differed.",
                   "b": "both rows decoded greedily; the broken prompt differs from the training prompts in its "
                        "last characters."})

question(id="q18_pad_eos", lesson=LESSON, kind="choice", answer_hash="1f93a3d45876e79590fb8e90",
         text="Case 3. With tok.pad_token = tok.eos_token and transformers' DataCollatorForLanguageModeling "
              "(mlm=False), no example's EOS gets a label. Why?",
         choices=("the collator masks only padding at the right end of a row, so the EOS is cut by max_length",
                  "the collator sets -100 wherever input_ids equals the pad id, and the EOS now has that id",
                  "special tokens never get labels in transformers; the template's turn end is trained instead"),
         feedback={"a": "the EOS is in every row and inside max_length; the collator finds it by its id, which "
                        "pad = eos made the pad id.",
                   "c": "with a pad token of its own, the fixed labels train the EOS in every example: special "
                        "tokens are trained like any other."})

question(id="q18_targets", lesson=LESSON, kind="choice", answer_hash="cba22ce37ae3e67bfd77a784",
         text="Case 4. LoraConfig(target_modules=['q_proj', 'v_prj']) trains without an error, but the trainable "
              "parameter count is half of what r=8 on two projections gives. Why?",
         choices=("peft counts each adapter's A and B as one matrix, so the printed count is half of what trains",
                  "peft adapts the names that match and raises only when none does: 'v_prj' was skipped",
                  "the value projection shares the query's adapter, so one adapter serves the two of them"),
         feedback={"a": "the count is right: spelled correctly, the same config trains twice as many parameters.",
                   "c": "each targeted Linear layer gets its own A and B; a layer whose name matches no target "
                        "gets none."})

question(id="q18_all_masked", lesson=LESSON, kind="choice", answer_hash="6f2177d2f761359506777414",
         text="Case 5. The training loss is NaN at one step and finite before and after it. What is in that batch?",
         choices=("only rows whose every label is -100, so the mean over zero trained tokens is 0/0",
                  "a learning rate that overflowed float32 at that step; the run recovered by chance",
                  "an empty string that the tokenizer turned into NaN ids, which poisoned the batch"),
         feedback={"b": "a learning rate that overshoots raises the loss over several steps (case 6); here the "
                        "step before and the step after are normal.",
                   "c": "token ids are integers: they cannot be NaN. The NaN comes from the loss's division."})

question(id="q18_lr", lesson=LESSON, kind="choice", answer_hash="5b7eca443a73ef35582dba11",
         text="Case 6. The training loss jumps above twice its lowest value and zig-zags, while the same data at "
              "another setting falls smoothly. What do you change?",
         choices=("the batch size: a batch of 8 is too noisy, and the noise makes the loss jump up and down",
                  "nothing: the model is forgetting its pretraining, which always raises the training loss",
                  "the learning rate: its updates overshoot; lower it (a short sweep says how far)"),
         feedback={"a": "both runs used the same batches of 8; only the learning rate differed.",
                   "b": "forgetting shows on other text (lesson 14), not as a jump in the training loss itself."})

question(id="q18_merge", lesson=LESSON, kind="choice", answer_hash="c208fe8117432eb7a95b5298",
         text="Case 7. A QLoRA adapter merged into its 4-bit base and saved in 4 bits gives other logits than the "
              "unmerged adapter. Why?",
         choices=("W + ΔW was rounded to the NF4 grid again, and ΔW is mostly smaller than one NF4 step",
                  "merging always changes outputs by float rounding; the difference is noise to be ignored",
                  "an adapter trained on 4-bit weights works only unmerged: it cannot be merged at all"),
         feedback={"b": "the merge kept in float matches the unmerged model to about 1e-5 in the logits; the "
                        "4-bit merge does not.",
                   "c": "merged into the dequantised weights and kept in float it gives the unmerged model's "
                        "answers: the merge is fine, quantising it again is not."})

question(id="q18_dpo", lesson=LESSON, kind="choice", answer_hash="6bce68135965758b2bf3f17a",
         text="Case 8. DPO's reward margin grows as it should, but log pi(chosen) fell below "
              "the SFT model's. What happened?",
         choices=("beta is too high: raise it further and the policy is free to move the chosen answers up",
                  "DPO only widens the gap; it can push both answers down, the rejected ones faster",
                  "the pairs are swapped, so DPO is learning to prefer the rejected answers to the chosen"),
         feedback={"a": "a larger beta keeps the policy closer to pi_ref; it does not add a reason to raise the "
                        "chosen answers.",
                   "c": "with swapped pairs the margin, chosen minus rejected reward, would fall below 0; "
                        "here it grew."})

question(id="q18_grpo", lesson=LESSON, kind="choice", answer_hash="baf81d7bee19bc164f926eaf",
         text="Case 9. Every GRPO step logs loss 0.0000 and a gradient norm of 0; the mean reward is 1.0. Why?",
         choices=("beta = 0 removes the KL term, and with it the whole loss: set beta > 0 to train",
                  "the policy is perfect: a reward of 1.0 everywhere means that training has converged",
                  "each group's answers are the same, so rewards are equal and every advantage is 0"),
         feedback={"a": "beta weighs only the KL term; the policy term is there whatever beta is, and it is zero "
                        "because every advantage is.",
                   "b": "at temperature 1 the same model's mean reward is lower: there is more to learn, but "
                        "identical answers cannot show it."})

question(id="q18_leak", lesson=LESSON, kind="choice", answer_hash="a078a37b21ec35efcd1adc84",
         text="Case 10. After a data refresh and a few more steps, the dti score jumps from 0 to several right. "
              "Nothing else changed. What do you check first?",
         choices=("whether the extra steps taught the division, by scoring again with a longer generation",
                  "whether test rows are in the refresh: score the rows whose n-grams are not in training",
                  "whether the jump is noise, by rerunning the same training with two more seeds"),
         feedback={"a": "the rows that were not in the refresh stayed at 0: the model learned answers, not the "
                        "division.",
                   "c": "every seed trains on the same leaked rows and memorises them again: seeds cannot see a "
                        "leak."})

question(id="q18_gamed", lesson=LESSON, kind="choice", answer_hash="a119128f879e3209882eb978",
         text="Case 11. A reward for the risk rating pays 1.0 to the answer 'Risk: low Risk: medium Risk: high' "
              "on every loan. What is wrong?",
         choices=("the reward checks only that the gold rating appears, so a list of ratings is paid in full",
                  "the reward model is overfit to its preference pairs; train it again on more of them",
                  "the KL penalty is missing; with one the policy could not learn to game the reward"),
         feedback={"b": "this reward is a program (is the gold text in the answer?), not a trained model: more "
                        "data changes nothing it pays for.",
                   "c": "a KL penalty slows how far the policy moves; it does not change what the reward pays "
                        "for, and the listing is paid in full at any distance."})
