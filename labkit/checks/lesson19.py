"""Lesson 19 (interview prep): the deck, interview questions with one right answer from the whole course,
and the code drills interviews ask candidates to write.

The deck is data, labkit/assets/data/interview_deck.jsonl (read by labkit.interview.deck_rows), one question a line: id, topic, where (the lesson
and the figure it prints that back the answer), why (the reasoning), text, answer_hash, and for a choice
question its choices and feedback (why each wrong choice is wrong), for a number its rtol. Every line is
registered here as a labkit.check question; TOPICS and EXPLANATIONS keep topic and (where, why) for
labkit.interview (its quiz shows "where" after any answer and "why" once the answer is right). Choices are
written as interviews offer them: every option plausible, the wrong ones real misconceptions;
tests/test_interview.py checks over the whole deck that the right letter is spread over the positions and
is not given away by being the longest option. Answers are stored hashed (labkit.check); the answer key is
solutions/19_interview_prep_exercises.ipynb.

The drills, each checked against labkit's reference on public and random hidden cases (labkit.interview holds
the references, tested against peft, torch's attention, transformers' top-p warper, labkit's DPO loss and
pass@k):

    token_f1, rouge_l_f1        lesson 13's overlap metrics (token_f1 has a public case no set-based
                                implementation can pass: a word repeated on both sides)
    lora_linear                 lesson 01's forward, as asked on a whiteboard (rsLoRA's scale included)
    causal_attention            attention with a causal mask (lesson 06's packing builds on it)
    top_p_probs                 temperature and top-p: the distribution a sampler draws from
    dpo_mean_loss               lesson 09's loss from the four log-probabilities
    mean_pass_at_k              lesson 11's unbiased pass@k, averaged over problems
"""

from __future__ import annotations

import random

import torch

from labkit import evaluate, interview
from labkit.check import Case, exercise, number, question, randn, tensor

LESSON = "19"
TOPICS: dict[str, str] = {}  # question id -> topic
EXPLANATIONS: dict[str, tuple[str, str]] = {}  # question id -> (where, why)


def _register(row: dict) -> None:
    rtol = row.get("rtol")
    text = row["text"] + (f" ({rtol:.1%} tolerance)" if rtol else "")
    question(id=row["id"], lesson=LESSON, kind="choice" if row.get("choices") else "number",
             answer_hash=row["answer_hash"], text=text, choices=tuple(row.get("choices", ())),
             feedback=row.get("feedback"), rtol=rtol)
    TOPICS[row["id"]] = row["topic"]
    EXPLANATIONS[row["id"]] = (row["where"], row["why"])


for _row in interview.deck_rows():
    _register(_row)


# ---------------------------------------------------------------------------------------------
# token_f1 and rouge_l_f1 (lesson 13, section 1)

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


# ---------------------------------------------------------------------------------------------
# lora_linear(x, W, A, B, alpha, r, rslora) -> (..., d_out)


def _lora_case(rng, batch, d_in, d_out, r, rslora, zero_b=False, label="", hint=""):
    B = torch.zeros(d_out, r) if zero_b else randn(rng, d_out, r, scale=0.1)
    return Case({"x": randn(rng, *batch, d_in), "W": randn(rng, d_out, d_in, scale=0.2), "A": randn(rng, r, d_in, scale=0.2),
                 "B": B, "alpha": float(2 * r), "r": r, "rslora": rslora}, label, hint)


exercise(id="lora_linear", lesson=LESSON, title="A LoRA linear layer's forward pass",
         signature="lora_linear(x, W, A, B, alpha, r, rslora)",
         reference=interview.lora_linear,
         public=lambda: [_lora_case(random.Random(0), (2, 3), 8, 6, 2, False, label="alpha/r",
                                    hint="x Wᵀ + (alpha/r) · x Aᵀ Bᵀ"),
                         _lora_case(random.Random(1), (4,), 8, 6, 4, False, zero_b=True, label="B = 0: the base layer",
                                    hint="with B = 0 the output is x Wᵀ"),
                         _lora_case(random.Random(2), (3,), 16, 5, 4, True, label="rsLoRA",
                                    hint="with rslora the scale is alpha / sqrt(r)")],
         hidden=lambda rng: [_lora_case(rng, (rng.randint(1, 3), rng.randint(1, 5)), rng.choice([8, 16]),
                                        rng.choice([4, 12]), rng.choice([1, 2, 4]), rng.random() < 0.5) for _ in range(5)],
         compare=tensor(rtol=1e-4, atol=1e-5),
         hint="x @ W.T + scale * (x @ A.T) @ B.T, scale = alpha/r, or alpha/sqrt(r) with rslora")


# ---------------------------------------------------------------------------------------------
# causal_attention(q, k, v) -> (batch, heads, seq, d)


def _qkv(rng, b, h, s, d, scale=1.0, label="", hint=""):
    return Case({"q": randn(rng, b, h, s, d, scale=scale), "k": randn(rng, b, h, s, d, scale=scale),
                 "v": randn(rng, b, h, s, d)}, label, hint)


exercise(id="causal_attention", lesson=LESSON, title="Attention with a causal mask",
         signature="causal_attention(q, k, v)",
         reference=interview.causal_attention,
         public=lambda: [_qkv(random.Random(0), 1, 1, 1, 4, label="one position",
                              hint="a single position attends to itself only: the output is v"),
                         _qkv(random.Random(1), 2, 2, 5, 8, label="five positions",
                              hint="position i sees positions 0..i: -inf above the diagonal, before the softmax"),
                         _qkv(random.Random(2), 1, 2, 6, 16, scale=3.0, label="large scores",
                              hint="divide the scores by sqrt(d), d = q.shape[-1]")],
         hidden=lambda rng: [_qkv(rng, rng.randint(1, 2), rng.randint(1, 3), rng.randint(2, 9), rng.choice([4, 8, 16]))
                             for _ in range(5)],
         compare=tensor(rtol=1e-4, atol=1e-5),
         hint="softmax(q kᵀ / sqrt(d) with -inf where j > i) @ v; torch.triu(..., diagonal=1) marks j > i")


# ---------------------------------------------------------------------------------------------
# top_p_probs(logits, temperature, top_p) -> probabilities, same shape


def _logits(rng, *shape, temperature, top_p, label="", hint=""):
    return Case({"logits": randn(rng, *shape, scale=2.0), "temperature": temperature, "top_p": top_p}, label, hint)


exercise(id="top_p_probs", lesson=LESSON, title="Temperature and top-p: the distribution a sampler draws from",
         signature="top_p_probs(logits, temperature, top_p)",
         reference=interview.top_p_probs,
         public=lambda: [_logits(random.Random(0), 10, temperature=1.0, top_p=1.0, label="top_p = 1: plain softmax"),
                         _logits(random.Random(1), 10, temperature=0.5, top_p=1.0, label="temperature 0.5",
                                 hint="divide the logits by the temperature before the softmax"),
                         _logits(random.Random(2), 10, temperature=1.0, top_p=0.01, label="tiny top_p",
                                 hint="the most likely token is always kept, even when it alone is above top_p"),
                         _logits(random.Random(3), 3, 12, temperature=1.3, top_p=0.7, label="a batch of 3 rows",
                                 hint="keep the smallest set of most likely tokens whose probabilities reach top_p, "
                                      "per row, then renormalise")],
         hidden=lambda rng: [_logits(rng, rng.randint(1, 3), rng.randint(5, 30), temperature=rng.choice([0.7, 1.0, 1.5]),
                                     top_p=rng.choice([0.5, 0.8, 0.9, 0.95])) for _ in range(5)],
         compare=tensor(rtol=1e-4, atol=1e-6),
         hint="sort descending, keep a token while the mass of the tokens before it is below top_p, zero the rest, "
              "renormalise")


# ---------------------------------------------------------------------------------------------
# dpo_mean_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> float


def _logps(rng, n, beta, label="", hint=""):
    return Case({"policy_chosen": randn(rng, n, scale=5.0) - 20, "policy_rejected": randn(rng, n, scale=5.0) - 20,
                 "ref_chosen": randn(rng, n, scale=5.0) - 20, "ref_rejected": randn(rng, n, scale=5.0) - 20,
                 "beta": beta}, label, hint)


def _equal_policy():
    logps = torch.tensor([-12.0, -30.5])
    return Case({"policy_chosen": logps, "policy_rejected": logps + 3, "ref_chosen": logps, "ref_rejected": logps + 3,
                 "beta": 0.1}, "policy = reference", hint="with pi_theta = pi_ref every log-ratio is 0: loss log 2")


exercise(id="dpo_mean_loss", lesson=LESSON, title="The DPO loss from four log-probabilities",
         signature="dpo_mean_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)",
         reference=interview.dpo_mean_loss,
         public=lambda: [_equal_policy(),
                         _logps(random.Random(1), 4, 0.1, "four pairs, beta 0.1",
                                hint="margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)"),
                         _logps(random.Random(2), 3, 2.0, "a large beta: large margins",
                                hint="-log sigmoid(z) is F.softplus(-z) or -F.logsigmoid(z): stable for large |z|")],
         hidden=lambda rng: [_logps(rng, rng.randint(1, 8), rng.choice([0.05, 0.1, 0.5, 1.0])) for _ in range(5)],
         compare=number(rtol=1e-5, atol=1e-7),
         hint="mean over pairs of -log sigmoid(beta * margin)")


# ---------------------------------------------------------------------------------------------
# mean_pass_at_k(n, correct, k) -> float


exercise(id="mean_pass_at_k", lesson=LESSON, title="pass@k over problems, without bias",
         signature="mean_pass_at_k(n, correct, k)",
         reference=interview.mean_pass_at_k,
         public=lambda: [Case({"n": 4, "correct": [1], "k": 2}, "one problem, 1 of 4 right, k = 2",
                              hint="1 - C(n - c, k) / C(n, k) (math.comb), not 1 - (1 - c/n)^k"),
                         Case({"n": 8, "correct": [0, 8, 2], "k": 1}, "k = 1", hint="pass@1 is the share of right samples"),
                         Case({"n": 5, "correct": [3, 0], "k": 3}, "fewer wrong samples than k",
                              hint="when n - c < k every draw of k holds a right sample: 1.0")],
         hidden=lambda rng: [Case({"n": n, "correct": [rng.randint(0, n) for _ in range(rng.randint(1, 6))],
                                   "k": rng.randint(1, n)}) for n in (rng.choice([8, 16, 50, 200]) for _ in range(5))],
         compare=number(rtol=1e-6, atol=1e-9),
         hint="the mean over problems of 1 - C(n - c, k) / C(n, k)")
