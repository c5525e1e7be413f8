"""Lesson 18, the clinic: broken fine-tuning runs, each next to the same run with its one fault fixed.

Each case runner trains or measures something real on the model it is given and returns plain numbers
(and the per-step losses where a curve tells the story); the fixes are small functions that the lesson's
exercises ask learners to write again (labkit/checks/lesson18.py grades them against these). This module
holds the SFT-side cases (turn end, serving template, pad = EOS, target modules, an all -100 batch, the
learning rate); labkit.lessons.clinic_beyond holds the rest (4-bit merge, DPO, GRPO, leaks, gamed rewards).
"""

from __future__ import annotations

import copy
import math

from .. import adapters, chat, data, sft
from ..evaluate import answer, exact_matches
from ..train import disable_dropout, fit, IGNORE_INDEX, optimizer

LINKS = {  # the lesson that teaches each case's cause
    "turn_end": "06_sft", "template": "06_sft", "pad_eos": "06_sft", "targets": "02_lora_with_peft",
    "all_masked": "06_sft", "lr": "02_lora_with_peft", "merge_4bit": "05_qlora", "dpo": "09_dpo",
    "grpo": "11_rl_verifiable_rewards", "leak": "07_data", "gamed": "11_rl_verifiable_rewards"}


def rows(task: str, split: str = "train", n: int | None = None) -> list[dict]:
    """The course's instruction rows of one family ("dti", "risk", ...) from SPLIT ("train", "eval")."""
    out = [r for r in data.read_jsonl(f"instructions_{split}.jsonl") if r["task"] == task]
    return out if n is None else out[:n]


def pairs(tok, rows_: list[dict]) -> list[dict]:
    """ROWS as {"prompt", "completion"} from TOK's own chat template."""
    return [data.to_prompt_completion(r, tok) for r in rows_]


def fresh_lora(base, seed: int):
    """A copy of BASE with a new LoRA adapter (r 8, alpha 16) on its linear layers, seeded: the base is untouched."""
    return adapters.add(copy.deepcopy(base), "lora", seed=seed, r=8, alpha=16)


# ---------------------------------------------------------------------------------------------- fixes


def untrained_stop(labels: list[list[int]], stop_ids: list[int]) -> list[int]:
    """The examples whose LABELS (one list per example, -100 where not trained) train no token of
    STOP_IDS: a model trained on them never learns to end its turn. Returns their indices, increasing."""
    stops = set(stop_ids)
    return [i for i, row in enumerate(labels) if not any(int(x) in stops for x in row)]


def lm_labels(input_ids, attention_mask):
    """Causal-LM labels that mask padding by the attention mask, never by the pad id (which may be EOS):
    a copy of INPUT_IDS (batch, seq) with -100 where ATTENTION_MASK is 0."""
    labels = input_ids.clone()
    labels[attention_mask == 0] = IGNORE_INDEX
    return labels


def unmatched_targets(module_names: list[str], target_modules: list[str]) -> list[str]:
    """The entries of TARGET_MODULES that match no module: peft matches a name equal to the target or
    ending in "." + target. Returns them in the order given."""
    return [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in module_names)]


def supervised_rows(labels) -> list[int]:
    """The rows of LABELS (batch, seq) with at least one label that is not -100: keep those, drop the rest."""
    return [i for i, row in enumerate(labels.tolist()) if any(x != IGNORE_INDEX for x in row)]


def diverged_at(losses: list[float], factor: float = 2.0) -> int | None:
    """The first step whose loss is not finite or above FACTOR times the lowest loss before it; None if none."""
    low = math.inf
    for i, x in enumerate(losses):
        if not math.isfinite(x) or (i > 0 and x > factor * low):
            return i
        low = min(low, x)
    return None


def safe_lr(runs: dict) -> float:
    """The largest learning rate of RUNS ({lr: losses per step}) whose run never diverged (diverged_at is None);
    raises ValueError when every run diverged."""
    kept = [lr for lr, losses in runs.items() if diverged_at(losses) is None]
    if not kept:
        raise ValueError("every run diverged: try smaller learning rates.")
    return max(kept)


def misspell(name: str) -> str:
    """NAME with its second-to-last letter dropped ("v_proj" -> "v_prj"): the typo of case 4."""
    return name[:-2] + name[-1]


# ---------------------------------------------------------------------------------------------- measures


def stop_probability(model, tok, pairs_: list[dict]) -> float:
    """The mean probability the model gives a stop token right after each completion's answer (teacher forced)."""
    import torch

    stops = chat.stop_token_ids(tok, model)
    total, device = 0.0, next(model.parameters()).device
    with torch.no_grad():
        for p in pairs_:
            answer = p["completion"][:len(p["completion"]) - len(chat.turn_end(tok))]
            ids = torch.tensor([chat.encode(tok, p["prompt"] + answer)], device=device)
            probs = model(input_ids=ids).logits[0, -1].softmax(-1)
            total += probs[stops].sum().item()
    return total / len(pairs_)


def generations(model, tok, prompts: list[str], max_new_tokens: int = 40) -> list[dict]:
    """Greedy answers to PROMPTS: {"text": the decoded new tokens, "stopped": did a stop token end it}."""
    import torch

    stops, out = chat.stop_token_ids(tok, model), []
    device = next(model.parameters()).device
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([chat.encode(tok, p)], device=device)
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id)
            new = seq[0, ids.shape[1]:].tolist()
            out.append({"text": tok.decode(new, skip_special_tokens=False), "stopped": any(t in stops for t in new)})
    return out


# ---------------------------------------------------------------------------------------------- cases


def turn_end_case(base, tok, steps: int, n_eval: int = 8, seed: int = 0) -> dict:
    """Case 1: SFT with a max_length that cuts every answer before its turn end, against max_length 256.

    {"max_length": the broken value, "untrained": examples training no stop token (broken, fixed),
     "p_stop": mean stop probability after held-out answers, "stopped": greedy answers that stop (k of n),
     "sample": one broken and one fixed generation, "n": training rows}.
    """
    train = pairs(tok, rows("dti"))
    evals = pairs(tok, rows("dti", "eval", n_eval))
    cut = max(len(chat.encode(tok, p["prompt"])) for p in train) + 4
    out = {"max_length": cut, "n": len(train)}
    for name, max_length in (("broken", cut), ("fixed", 256)):
        feats = sft.tokenize_all(tok, train, max_length)
        pm = fresh_lora(base, seed)
        sft.train(pm, tok, train, steps=steps, lr=3e-3, batch_size=8, max_length=max_length, seed=seed, progress=False)
        pm.eval()
        gens = generations(pm, tok, [p["prompt"] for p in evals[:n_eval]])
        out[name] = {"untrained": len(untrained_stop([f["labels"] for f in feats], chat.stop_token_ids(tok, pm))),
                     "p_stop": stop_probability(pm, tok, evals), "stopped": sum(g["stopped"] for g in gens),
                     "sample": gens[0]["text"]}
    return out


def template_case(sft_model, tok, n_eval: int = 32) -> dict:
    """Case 2: the SFT model asked with the template's prompt but no generation prompt (broken) and with
    chat.render_prompt (fixed). {"broken"/"fixed": {"prompt_end": the prompt's last characters,
    "right": exact answers, "sample"}, "n"}."""

    evals = [r for t in ("risk", "classify", "qa", "extract") for r in rows(t, "eval", n_eval // 4)]
    gold = [r["output"] for r in evals]
    asks = {"broken": [tok.apply_chat_template(data.to_messages(r)[:-1], tokenize=False) for r in evals],
            "fixed": [chat.render_prompt(tok, data.user_message(r)) for r in evals]}
    out = {"n": len(evals)}
    for name, prompts in asks.items():
        got = answer(sft_model, tok, prompts, max_new_tokens=32)
        out[name] = {"prompt_end": prompts[0][-24:], "right": sum(exact_matches(got, gold)), "sample": got[0]}
    return out


def pad_eos_case(tok, n: int = 16) -> dict:
    """Case 3: transformers' DataCollatorForLanguageModeling after tok.pad_token = tok.eos_token (broken)
    against labels masked by the attention mask (fixed), on N tokenised SFT examples.

    {"stops": {stop token: examples whose labels train it, broken and fixed}, "n", "pad", "eos"}."""
    from transformers import DataCollatorForLanguageModeling

    feats = [{"input_ids": f["input_ids"]} for f in sft.tokenize_all(tok, pairs(tok, rows("risk", n=n)))]
    broken_tok = copy.deepcopy(tok)
    broken_tok.pad_token = broken_tok.eos_token
    batch = DataCollatorForLanguageModeling(broken_tok, mlm=False)(copy.deepcopy(feats))
    fixed = lm_labels(batch["input_ids"], batch["attention_mask"])
    out = {"n": n, "pad": broken_tok.pad_token, "eos": tok.eos_token, "stops": {}}
    for sid in chat.stop_token_ids(tok):
        out["stops"][tok.convert_ids_to_tokens(sid)] = {
            "broken": int((batch["labels"] == sid).any(1).sum()), "fixed": int((fixed == sid).any(1).sum())}
    return out


def targets_case(base) -> dict:
    """Case 4: LoRA on the query and value projections with the value's name misspelled, against spelled right.

    {"targets": (broken list, fixed list), "trainable": (broken, fixed) trainable parameters,
     "unmatched": what unmatched_targets finds, "alone": what peft says to the misspelled name alone}."""
    from peft import LoraConfig, get_peft_model

    fixed = adapters.targets(base, "attention")
    if len(fixed) == 1:  # a fused query-key-value layer (GPT-2): misspell the output projection beside it
        fixed = fixed + [n for n in adapters.targets(base, "all") if n not in fixed][:1]
    broken = [fixed[0], misspell(fixed[1])]
    counts = []
    for t in (broken, fixed):
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=t))
        counts.append(pm.get_nb_trainable_parameters()[0])
    try:
        get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=[broken[1]]))
        alone = "accepted"
    except Exception as exc:  # peft's NoMatchingPeftModuleError
        alone = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    names = [n for n, _ in base.named_modules()]
    return {"targets": (broken, fixed), "trainable": tuple(counts), "unmatched": unmatched_targets(names, broken),
            "alone": alone}


def all_masked_case(base, tok, steps: int = 8, bad_step: int = 2, seed: int = 0) -> dict:
    """Case 5: LoRA SFT whose batch BAD_STEP holds only examples with every label -100 (a response marker
    that never matched), against the same batches with those rows dropped (supervised_rows).

    {"broken"/"fixed": losses per step, "bad_step", "nan_weights": adapter weights that are NaN after training}."""
    import torch

    feats = sft.tokenize_all(tok, pairs(tok, rows("risk", n=4 * steps)))
    batches = [sft.PadCollator(tok.pad_token_id)(feats[i:i + 4]) for i in range(0, 4 * steps, 4)]
    batches[bad_step]["labels"][:] = IGNORE_INDEX
    out = {"bad_step": bad_step}
    for name in ("broken", "fixed"):
        data_ = []
        for b in batches:
            keep = supervised_rows(b["labels"]) if name == "fixed" else list(range(len(b["labels"])))
            if keep:
                data_.append({k: v[keep] for k, v in b.items()})
        pm = fresh_lora(base, seed)
        params, opt = optimizer(pm, 2e-3, seed)
        out[name] = fit(pm, iter(data_), opt, params, len(data_))
        out[name + "_nan_weights"] = sum(int(torch.isnan(p).any()) for p in params)
    return out


def lr_case(base, tok, steps: int = 12, lrs=(1e-1, 2e-3), seed: int = 0) -> dict:
    """Case 6: the same LoRA SFT at a learning rate that diverges (LRS[0]) and at a sound one (LRS[1]).

    {"lrs", "broken"/"fixed": losses per step, "diverged": diverged_at of each}."""
    train = pairs(tok, rows("risk"))
    out = {"lrs": tuple(lrs)}
    for name, lr in zip(("broken", "fixed"), lrs):
        pm = fresh_lora(base, seed)
        disable_dropout(pm)
        out[name] = sft.train(pm, tok, train, steps=steps, lr=lr, batch_size=8, seed=seed, progress=False)
    out["diverged"] = (diverged_at(out["broken"]), diverged_at(out["fixed"]))
    return out


def loss_figure(case: dict, title: str, labels: tuple[str, str]):
    """The broken and fixed loss curves of a case (NaN steps marked at the top), a closed pyplot figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for key, label, style in (("broken", labels[0], "o-"), ("fixed", labels[1], "s--")):
        ys = case[key]
        ax.plot(range(1, len(ys) + 1), ys, style, label=label)
        bad = [i + 1 for i, y in enumerate(ys) if not math.isfinite(y)]
        if bad:
            top = max([y for y in ys + case["fixed"] if math.isfinite(y)])
            ax.plot(bad, [top] * len(bad), "rx", markersize=9, label="NaN loss")
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.legend(frameon=False)
    fig.tight_layout()
    plt.close(fig)
    return fig
