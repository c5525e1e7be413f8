"""Lesson 18, the clinic, cases 7 to 11: a naive merge into 4-bit weights, DPO pushing the chosen answer
down, GRPO groups with equal rewards, a leak between train and test, a gamed reward. Each runner returns
the broken run's numbers and the fixed run's; the fixes are the functions learners write again in the
lesson's exercises (labkit/checks/lesson18.py). Cases 1 to 6 are in labkit.lessons.clinic.
"""

from __future__ import annotations

import copy
import re

from .. import adapters, chat, data, dataprep, grpo, preference, quant, rewards, sft
from ..models import ASSETS, shipped_or_live
from . import clinic
from .data import greedy_exact

# ---------------------------------------------------------------------------------------------- fixes


def merge_dequantized(codes, absmax, shape, A, B, scaling: float):
    """The merged weight of a QLoRA layer: the NF4 base dequantised (labkit.quant.dequantize_nf4, blocks of
    64) plus scaling * B @ A, kept in floating point (never quantised again). A: (r, in), B: (out, r);
    returns (out, in) float32."""
    return quant.dequantize_nf4(codes, absmax, shape) + scaling * (B.float() @ A.float())


def informative_groups(rewards_, group_size: int) -> list[bool]:
    """For each group of GROUP_SIZE consecutive rewards: do they differ? A group of equal rewards has
    zero advantage everywhere and gives GRPO no gradient."""
    r = [float(x) for x in rewards_]
    return [max(r[i:i + group_size]) > min(r[i:i + group_size]) for i in range(0, len(r), group_size)]


def decontaminate(test_texts: list[str], train_texts: list[str], n: int = 8, threshold: float = 0.5) -> list[int]:
    """The indices of TEST_TEXTS to keep: those with less than THRESHOLD of their word n-grams in TRAIN_TEXTS
    (labkit.dataprep.ngram_overlap)."""
    return [i for i, s in enumerate(dataprep.ngram_overlap(test_texts, train_texts, n)) if s < threshold]


def dpo_fix_kwargs(sft_weight: float = 1.0) -> dict:
    """The DPOConfig arguments that add SFT_WEIGHT times the chosen answers' NLL to DPO's loss (RPO):
    {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}."""
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, float(sft_weight)]}


RATING = re.compile(r"Risk: (?:low|medium|high)\b", re.IGNORECASE)


def verify_rating(completion: str, gold: str) -> float:
    """1.0 when COMPLETION states exactly one risk rating ("Risk: low|medium|high", any case) and it is GOLD's;
    else 0.0. A listing of every rating, or a rating followed by another, is not an answer."""
    found = RATING.findall(completion)
    return float(len(found) == 1 and found[0].lower() == gold.strip().lower())


# ---------------------------------------------------------------------------------------------- case 7


def nf4_roundtrip(weight):
    """WEIGHT as an NF4 model computes with it: quantised (blocks of 64) and dequantised, float32."""
    codes, absmax = quant.quantize_nf4(weight.detach().float())
    return quant.dequantize_nf4(codes, absmax, weight.shape)


def _targets_4bit(pm):
    """The adapted Linear layers of a peft model: (lora layer, its base Linear)."""
    return [(m, m.base_layer) for m in pm.modules() if hasattr(m, "base_layer") and "default" in getattr(m, "lora_A", {})]


def merge_4bit_case(base, tok, steps: int, model="bundled", n_eval: int = 40, seed: int = 0) -> dict:
    """Case 7: a LoRA adapter trained on an NF4 base, merged three ways, scored on N_EVAL held-out rows.

    The 4-bit base is simulated exactly on any CPU: every adapted weight is replaced by its NF4
    round trip (labkit.quant, byte for byte bitsandbytes' NF4 at blocksize 64). Ways: "unmerged" (base
    + adapter at inference), "naive" (W + ΔW quantised to NF4 again), "fixed" (W + ΔW kept in float:
    merge_dequantized). STEPS 0: the shipped qlora_sft adapter (scripts/train_sft_adapter.py's QLoRA
    run, lesson 05) for the bundled model; else a live LoRA of STEPS steps on the NF4 base.

    {"about", "right": {way: k}, "n", "lost": mean ||Q(W + ΔW) - (W + ΔW)|| / ||ΔW|| over layers,
     "max_diff": {way: largest logit difference from "unmerged"}, "loss": {way: mean loss on the answers
     of 8 held-out rows}}.
    """
    import torch

    steps, note = shipped_or_live(steps, model, "QLoRA adapter qlora_sft", "ADAPTER_STEPS")
    base4 = copy.deepcopy(base)
    if steps == 0:
        from peft import PeftModel

        pm = PeftModel.from_pretrained(base4, str(ASSETS / "adapters" / "qlora_sft"))
        about = "the shipped QLoRA adapter qlora_sft (scripts/train_ship_adapters.py, 300 steps)"
    else:
        pm = clinic.fresh_lora(base4, seed)
        about = f"a live LoRA of {steps} steps on the NF4 base" + (f"\n{note}" if note else "")
    with torch.no_grad():
        for m, lin in _targets_4bit(pm):  # quantised in (out, in) layout, as bitsandbytes stores a Linear
            flip = getattr(m, "fan_in_fan_out", False)
            lin.weight.copy_(nf4_roundtrip(lin.weight.T).T if flip else nf4_roundtrip(lin.weight))
    if steps:
        train = clinic.pairs(tok, [r for r in data.read_jsonl("instructions_train.jsonl")])
        sft.train(pm, tok, train, steps=steps, lr=2e-3, batch_size=8, seed=seed, progress=False)
    pm.eval()
    held = data.read_jsonl("instructions_eval.jsonl")[:n_eval]
    out = {"about": about, "n": len(held), "right": {"unmerged": sum(greedy_exact(pm, tok, held))}}
    merged = {}
    lost = []
    with torch.no_grad():
        for m, lin in _targets_4bit(pm):
            w, delta = lin.weight.detach().clone(), m.get_delta_weight("default").float()
            A, B, s = m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"]
            flip = getattr(m, "fan_in_fan_out", False)  # GPT-2's Conv1D stores W as (in, out): merge its transpose
            wt = w.T.contiguous() if flip else w
            codes, absmax = quant.quantize_nf4(wt)  # w is already on the NF4 grid: these codes give it back
            fixed = merge_dequantized(codes, absmax, wt.shape, A, B, s)
            fixed = fixed.T.contiguous() if flip else fixed
            naive = nf4_roundtrip((w + delta).T).T if flip else nf4_roundtrip(w + delta)
            lost.append(((naive - w - delta).norm() / delta.norm()).item())
            merged[m] = {"fixed": fixed, "naive": naive}
    out["lost"] = sum(lost) / len(lost)
    plain = pm.get_base_model() if hasattr(pm, "get_base_model") else pm
    batch = sft.PadCollator(tok.pad_token_id)(sft.tokenize_all(tok, clinic.pairs(tok, held[:8])))
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        first = pm(**batch)
    out["loss"], out["max_diff"] = {"unmerged": first.loss.item()}, {}
    for way in ("naive", "fixed"):
        with pm.disable_adapter(), torch.no_grad():
            saved = {m: m.base_layer.weight.detach().clone() for m in merged}
            for m, ws in merged.items():
                m.base_layer.weight.copy_(ws[way])
            out["right"][way] = sum(greedy_exact(plain, tok, held))
            result = plain(**batch)
            out["loss"][way] = result.loss.item()
            out["max_diff"][way] = (result.logits - first.logits).abs()[keep].max().item()
            for m, w in saved.items():
                m.base_layer.weight.copy_(w)
    return out


# ---------------------------------------------------------------------------------------------- case 8


def dpo_case(sft_model, tok, steps: int = 6, sft_weight: float = 1.0, n: int = 16, task: str = "risk",
             seed: int = 0) -> dict:
    """Case 8: DPO from the SFT model on N preference pairs, alone (broken) and with SFT_WEIGHT times the
    NLL of the chosen answers beside it, on pairs of TASK (fixed: DPOConfig(loss_type=["sigmoid", "sft"])).

    {"broken"/"fixed": {"chosen", "rejected": mean log pi_theta - log pi_ref of those answers (nats),
     "margin": the last step's reward margin}, "steps", "sft_weight", "n"}."""
    pairs_ = [r for r in data.read_jsonl("preferences_train.jsonl") if r["task"] == task][:n]
    ref_logps = preference.pair_logps(sft_model, tok, pairs_)
    out = {"steps": steps, "sft_weight": sft_weight, "n": len(pairs_)}
    for name, w in (("broken", 0.0), ("fixed", sft_weight)):
        policy = adapters.add(copy.deepcopy(sft_model), "lora", seed=seed, r=8, alpha=16)
        log = preference.train_dpo(policy, sft_model, tok, pairs_, steps=steps, lr=3e-3, batch_size=8, seed=seed,
                                   sft_weight=w)
        chosen, rejected = preference.logratio_moves(policy, tok, pairs_, ref_logps)
        out[name] = {"chosen": chosen, "rejected": rejected, "margin": log["margin"][-1]}
    return out


# ---------------------------------------------------------------------------------------------- cases 9 and 11


def sampled_groups(sft_model, tok, task: str = "risk", n_prompts: int = 12, group_size: int = 8,
                   temperature: float = 1.0, seed: int = 0) -> dict:
    """GROUP_SIZE sampled answers (at TEMPERATURE) of the SFT model to each of N_PROMPTS questions of TASK
    (labkit.rewards' "risk" or "total"). {"prompts", "gold", "texts", "group_size", "batch": the sample}."""
    qs = rewards.make_task(task, n_prompts, seed=1000 + seed, exclude=rewards.sft_keys())
    prompts = [chat.render_prompt(tok, data.user_message(r)) for r in qs]
    batch = grpo.sample_group(sft_model, tok, prompts, group_size, chat.stop_token_ids(tok, sft_model),
                              max_new_tokens=12, temperature=temperature, seed=seed)
    gold = [r["output"] for r in qs for _ in range(group_size)]
    return {"prompts": batch["prompts"], "gold": gold, "texts": batch["texts"], "group_size": group_size,
            "temperature": temperature, "batch": batch}


def _grad_norm(policy, batch: dict, advantages) -> tuple[float, float]:
    """GRPO's loss on BATCH with ADVANTAGES (one on-policy step, beta 0) and the gradient norm it gives."""
    import torch

    logps = grpo.completion_logps(policy, batch["input_ids"], batch["attention_mask"], batch["prompt_len"])
    loss, _ = grpo.grpo_loss(logps, logps.detach(), None, advantages, batch["completion_mask"])
    policy.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad.norm() ** 2 for p in policy.parameters() if p.grad is not None]
    norm = float(torch.stack(grads).sum().sqrt()) if grads else 0.0
    policy.zero_grad(set_to_none=True)
    return loss.item(), norm


def grpo_case(sft_model, tok, samples: dict) -> dict:
    """Case 9: one GRPO step on the groups sampled at each temperature of SAMPLES ({"broken": sampled_groups at
    a low temperature, "fixed": at 1.0}), scored by exact match.

    {"broken"/"fixed": {"temperature", "distinct": mean distinct answers per group, "informative": groups whose
     rewards differ (informative_groups), "groups", "right": share of answers right, "loss", "grad_norm"}}."""
    import torch

    policy = copy.deepcopy(sft_model).requires_grad_(True)
    out = {}
    for name, sample in samples.items():
        g, texts = sample["group_size"], sample["texts"]
        r = rewards.exact_reward(sample["prompts"], texts, sample["gold"])
        adv = grpo.group_advantages(torch.tensor(r), g)
        loss, norm = _grad_norm(policy, sample["batch"], adv)
        out[name] = {"temperature": sample["temperature"], "groups": len(r) // g,
                     "distinct": sum(len(set(texts[i:i + g])) for i in range(0, len(texts), g)) / (len(r) // g),
                     "informative": sum(informative_groups(r, g)), "right": sum(r) / len(r), "loss": loss,
                     "grad_norm": norm}
    return out


def gamed_case(sample: dict) -> dict:
    """Case 11: the same sampled risk ratings under a lenient reward (the gold answer appears anywhere:
    rewards.contains_reward, broken) and under verify_rating (exactly one rating, the right one: fixed), and
    one answer that lists every rating, which a policy under the lenient reward is paid to find.

    {"broken"/"fixed": {"samples": mean reward of the samples, "hack": the listing's mean reward},
     "hack": the listing, "paid_wrong": samples the lenient reward pays and verify_rating does not}."""
    p, t, gold = sample["prompts"], sample["texts"], sample["gold"]
    hack = " ".join(["Risk: low", "Risk: medium", "Risk: high"])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lenient = rewards.contains_reward(p, t, gold)
    strict = [verify_rating(c, g) for c, g in zip(t, gold)]
    return {"broken": {"samples": mean(lenient), "hack": mean(rewards.contains_reward(p, [hack] * len(gold), gold))},
            "fixed": {"samples": mean(strict), "hack": mean([verify_rating(hack, g) for g in gold])},
            "hack": hack, "paid_wrong": [c for c, a, b in zip(t, lenient, strict) if a > b][:3],
            "n_paid_wrong": sum(a > b for a, b in zip(lenient, strict)), "n": len(t)}


# ---------------------------------------------------------------------------------------------- case 10


def leak_case(sft_model, tok, steps: int = 10, n: int = 16, ngram: int = 13, threshold: float = 0.95,
              seed: int = 0) -> dict:
    """Case 10: N held-out dti rows are the test set; a data refresh put half of them into the training data, and
    the SFT model is trained STEPS more steps (LoRA) on that data. Scored on the whole test set (broken) and on
    the rows decontaminate keeps (fixed: n-grams of NGRAM words, THRESHOLD of them found in training).

    {"broken"/"fixed": {"rows", "right"}, "leaked": rows in training, "leaked_right", "clean_right",
     "flagged": rows decontaminate drops, "flagged_leaked": of those, the leaked ones}."""
    test = clinic.rows("dti", "eval", n)
    leaked = test[: n // 2]
    refresh = clinic.rows("dti", "train", n // 2) + leaked
    pm = clinic.fresh_lora(sft_model, seed)
    sft.train(pm, tok, clinic.pairs(tok, refresh), steps=steps, lr=3e-3, batch_size=8, seed=seed, progress=False)
    pm.eval()
    right = greedy_exact(pm, tok, test)
    train_texts = [dataprep.question(r) for r in data.read_jsonl("instructions_train.jsonl") + leaked]
    keep = decontaminate([dataprep.question(r) for r in test], train_texts, ngram, threshold)
    return {"broken": {"rows": len(test), "right": sum(right)},
            "fixed": {"rows": len(keep), "right": sum(right[i] for i in keep)}, "steps": steps,
            "leaked": len(leaked), "leaked_right": sum(right[:len(leaked)]), "clean_right": sum(right[len(leaked):]),
            "flagged": len(test) - len(keep), "flagged_leaked": sum(i not in keep for i in range(len(leaked)))}
