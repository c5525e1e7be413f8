"""Lesson 07's runs: the data sweep (how much, how clean, duplicates, leaks, data written by a model),
its held-out verdicts, what the lesson prints about them and the learning-curve figure.

One run ("cell") trains a fresh copy of the base model with trl's SFTTrainer (completion-only loss, the
settings of ``config``) on the rows the cell names, for a number of steps, then scores the held-out rows
(``heldout``: the eval and test splits, 80 per task family) by ``greedy_exact``. ``plan`` lists the
cells of the shipped sweep; ``scripts/data_curve.py`` runs them and writes
labkit/assets/results/data_curve.json, which ``result_for`` loads for the bundled model (any other
model gets a small live sweep, ``live_plan``, and a line saying so).

A cell's result: {"name", "kind", "steps", "rows" (training rows), "loss_first", "loss_last",
"right": "0110..." (one character per held-out row, in ``heldout`` order), "seconds"} plus what its kind
adds (the leaked rows' indices, the teacher's agreement, ...).
"""

from __future__ import annotations

import copy
import math
import random
import time

from .. import data, dataprep, guard
from ..chat import for_trl, stop_token_ids
from ..corpus import applicant, money
from ..evaluate import answer
from ..models import shipped_or_live
from ..preference import reference_model
from ..sft import loss_recorder, PadCollator, sft_config, tokenize_example
from ..tuning import load_results

RESULT = "data_curve"                              # labkit/assets/results/data_curve.json
SCRIPT = "scripts/data_curve.py"
SIZES = (25, 50, 100, 200, 400, 800)              # training examples, every family in turn
BUDGET = 100                                       # steps of the fixed compute budget: one pass over 800 rows
BATCH = 8
EPOCHS = 1                                         # the fixed number of passes of the other curve
LR = 3e-4
NOISE = (0.1, 0.3)
NOISE_SIZES = (800,)                               # noisy sets, compared with clean ones of this size
SMALL_CLEAN = 200                                  # and with this many clean rows
N_LEAK = 100                                       # held-out rows copied into the leak cell's training rows
N_DISTILL = 400                                    # new, unlabelled inputs the teacher labels
DISTILL_SEED = 7007
N_ENTITIES, PER_ENTITY = 150, 3


# ----------------------------------------------------------------------------- data

def heldout(n: int | None = None) -> list[dict]:
    """The held-out rows every cell is scored on: instructions_eval then instructions_test (400 rows,
    80 per family, families in turn), or the first N."""
    rows = data.read_jsonl("instructions_eval.jsonl") + data.read_jsonl("instructions_test.jsonl")
    return rows if n is None else rows[:n]


def pool() -> list[dict]:
    """The training pool: instructions_train.jsonl (1,200 rows, families in turn, so the first N hold
    N/5 of each)."""
    return data.read_jsonl("instructions_train.jsonl")


def new_inputs(n: int = N_DISTILL, seed: int = DISTILL_SEED) -> list[dict]:
    """N examples whose questions are in no split of the course: the unlabelled inputs a teacher labels
    (their gold answers are kept only to measure the teacher)."""
    taken = {data.split_key(r) for name in ("train", "eval", "test") for r in data.read_jsonl(f"instructions_{name}.jsonl")}
    return data.make_instructions(n, seed, exclude=taken)


def with_duplicates(rows: list[dict], copied: int, times: int, seed: int = 0) -> list[dict]:
    """ROWS plus TIMES - 1 extra copies of COPIED of them (chosen at random), shuffled: a scraped set in
    which a few items repeat many times."""
    rng = random.Random(seed)
    extra = [dict(r) for r in rng.sample(rows, copied) for _ in range(times - 1)]
    out = [dict(r) for r in rows] + extra
    rng.shuffle(out)
    return out


_NEAR = ("Page 1 of 1", "Scanned copy", "Received by email", "Copy for the file")


def scraped(rows: list[dict], exact: int, near: int, seed: int = 0) -> tuple[list[dict], dict]:
    """ROWS with planted duplicates, shuffled: EXACT copies that differ only in case and spacing, and NEAR
    copies with a line added to the input (a scan stamp). Returns (rows, truth) with truth {"exact": [(i,
    j)], "near": [(i, j)]}: pairs of indices in the returned rows, j the planted copy of i."""
    rng = random.Random(seed)
    picked = rng.sample(range(len(rows)), exact + near)
    copies = []
    for k, i in enumerate(picked):
        r = dict(rows[i])
        if k < exact:
            r["instruction"] = "  " + r["instruction"].upper() + " "
            r["input"] = r["input"].replace("\n", " \n")
        else:
            r["input"] = r["input"] + "\n" + rng.choice(_NEAR)
        copies.append((i, r, "exact" if k < exact else "near"))
    order = list(range(len(rows) + len(copies)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    out: list[dict] = [None] * len(order)  # type: ignore[list-item]
    for i, r in enumerate(rows):
        out[where[i]] = dict(r)
    truth: dict[str, list] = {"exact": [], "near": []}
    for k, (i, r, kind) in enumerate(copies):
        j = where[len(rows) + k]
        out[j] = r
        truth[kind].append((where[i], j))
    return out, truth


_PHRASES = {"risk": ("Rate the risk of this loan as low, medium or high.",
                     "How risky is this loan: low, medium or high?",
                     "Give the risk of this borrower's loan: low, medium or high."),
            "dti": ("Calculate the debt-to-income ratio for this mortgage applicant.",
                    "What is this borrower's debt-to-income ratio?",
                    "Work out the debt-to-income ratio of this applicant.")}


def entity_rows(n_entities: int = N_ENTITIES, per_entity: int = PER_ENTITY, seed: int = 11) -> list[dict]:
    """PER_ENTITY rows about each of N_ENTITIES applicants (risk for even ones, dti for odd ones): the same
    facts asked with another wording and the lines in another order, as a loan file is asked again.
    Each row has "entity": the applicant's number."""
    rng = random.Random(seed)
    out = []
    for e in range(n_entities):
        a = applicant(rng)
        task = "risk" if e % 2 == 0 else "dti"
        lines = [f"Borrower: {a['name']}", f"Monthly income: {money(a['income'])}", f"Monthly debts: {money(a['debts'])}"]
        if task == "risk":
            lines += [f"Credit score: {a['credit']}", f"Debt-to-income ratio: {round(100 * a['dti'])}%"]
            output = f"Risk: {a['risk']}"
        else:
            pct = round(100 * a["debts"] / a["income"])
            output = f"The debt-to-income ratio is {money(a['debts'])} / {money(a['income'])} = {pct}%."
        for k in range(per_entity):
            body = lines[:1] + rng.sample(lines[1:], len(lines) - 1)
            out.append({"task": task, "instruction": _PHRASES[task][k % 3], "input": "\n".join(body),
                        "output": output, "entity": e})
    return out


def split_rows(rows: list[dict], by: str, test_share: float = 1 / 3, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test) of ROWS: by="row" shuffles the rows, by="entity" the entities (an entity's rows all
    land on one side). The test side holds round(TEST_SHARE * len(ROWS)) rows either way."""
    guard.one_of("by", by, ("row", "entity"))
    rng = random.Random(seed)
    n_test = round(test_share * len(rows))
    if by == "row":
        order = rng.sample(range(len(rows)), len(rows))
        test = set(order[:n_test])
    else:
        entities = sorted({r["entity"] for r in rows})
        rng.shuffle(entities)
        test, k = set(), 0
        while len(test) < n_test:
            test |= {i for i, r in enumerate(rows) if r["entity"] == entities[k]}
            k += 1
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


# ----------------------------------------------------------------------------- training and scoring

def config(output_dir: str, steps: int, lr: float = LR, seed: int = 0, device: str = "cpu"):
    """The SFTConfig of every cell (the one lesson 07 spells out): batch 8, a constant learning rate, no
    warm-up or weight decay, completion-only loss, quiet and CPU-safe (labkit.sft.sft_config)."""

    return sft_config(output_dir, steps=steps, lr=lr, batch_size=BATCH, seed=seed, device=device)


def train(base, tok, rows: list[dict], steps: int, lr: float = LR, seed: int = 0, device: str = "cpu"):
    """A fresh copy of BASE fine-tuned (every weight) on ROWS for STEPS steps with trl's SFTTrainer.
    Returns (model in eval mode, losses per step)."""
    import tempfile

    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    pairs = [for_trl(tok, data.to_prompt_completion(r, tok)) for r in rows]
    recorder = loss_recorder()
    with tempfile.TemporaryDirectory(prefix="labkit_data_") as out:
        trainer = SFTTrainer(model=copy.deepcopy(base), args=config(out, steps, lr, seed, device),
                             train_dataset=Dataset.from_list(pairs), processing_class=tok, callbacks=[recorder])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return trainer.model.eval(), recorder.losses


def greedy_exact(model, tok, rows: list[dict], targets: list[str] | None = None, batch_size: int = 16) -> list[bool]:
    """For each of ROWS, would greedy decoding write exactly its answer (TARGETS[i], default the row's
    output) and stop? One forward pass per batch instead of generation (teacher forcing): right when every
    answer token is the model's argmax after the tokens before it, and the turn end (or an EOS) after
    them. evaluate.score's verdicts on generated text are the same (tests/test_lessons_data.py)."""
    import torch

    targets = [r["output"] for r in rows] if targets is None else targets
    stops = set(stop_token_ids(tok, model))
    feats = [tokenize_example(tok, **data.to_prompt_completion({**r, "output": t}, tok)) for r, t in zip(rows, targets)]
    collate, device, out = PadCollator(tok.pad_token_id), next(model.parameters()).device, []
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            chunk = feats[i:i + batch_size]
            batch = collate([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in chunk])
            pred = model(input_ids=batch["input_ids"].to(device),
                         attention_mask=batch["attention_mask"].to(device)).logits.argmax(-1).cpu()
            for j, f in enumerate(chunk):
                out.append(_forced_ok(f["input_ids"], pred[j].tolist(), f["prompt_length"], stops))
    return out


def _forced_ok(ids: list[int], pred: list[int], start: int, stops: set[int]) -> bool:
    for t in range(start, len(ids)):
        if ids[t] in stops:
            return pred[t - 1] in stops
        if pred[t - 1] != ids[t]:
            return False
    return True


# ----------------------------------------------------------------------------- the sweep

def plan(sizes=SIZES, budget: int = BUDGET, epochs: int = EPOCHS, noise=NOISE, noise_sizes=NOISE_SIZES,
         n_distill: int = N_DISTILL, n_entities: int = N_ENTITIES, n_heldout: int | None = None) -> list[dict]:
    """The cells of the sweep, in the order they run. Every cell but the fixed-epoch curve trains BUDGET
    steps. The two curves share their largest point when BUDGET steps are EPOCHS passes over it
    ("same_as"). The "teacher" cell labels the distillation inputs and must run before the students. The
    leak copies at most half of N_HELDOUT held-out rows into training."""
    sizes = sorted(sizes)
    cells = [{"name": f"budget_{n}", "kind": "curve", "n": n, "steps": budget} for n in sizes]
    for n in sizes:
        steps = math.ceil(epochs * n / BATCH)
        cell = {"name": f"epochs_{n}", "kind": "curve", "n": n, "steps": steps}
        cells.append({**cell, "same_as": f"budget_{n}"} if steps == budget else cell)
    cells += [{"name": f"noise{round(100 * rate)}_{n}", "kind": "noise", "n": n, "rate": rate, "steps": budget}
              for n in noise_sizes for rate in noise]
    mid = sizes[len(sizes) // 2]
    cells += [{"name": "duplicates", "kind": "duplicates", "n": mid, "copied": mid // 4, "times": 5, "steps": budget},
              {"name": "leak", "kind": "leak", "n": mid, "leaked": min(N_LEAK, mid // 2, (n_heldout or N_LEAK * 2) // 2),
               "steps": budget},
              {"name": "entity_row", "kind": "entity", "by": "row", "entities": n_entities, "steps": budget},
              {"name": "entity_entity", "kind": "entity", "by": "entity", "entities": n_entities, "steps": budget},
              {"name": "teacher", "kind": "teacher", "n": n_distill}]
    cells += [{"name": f"distill_{labels}", "kind": "distill", "labels": labels, "n": n_distill, "steps": budget}
              for labels in ("gold", "teacher", "verified")]
    return cells


def live_plan(steps: int, sizes=(25, 100), n_distill: int = 40, n_entities: int = 24,
              n_heldout: int | None = None) -> list[dict]:
    """A small sweep for a model the shipped one says nothing about: the same kinds of cells, fewer and
    smaller, STEPS steps each (the fixed-epoch curve keeps its own steps)."""
    return plan(sizes=sizes, budget=steps, noise=(0.3,), noise_sizes=(max(sizes),), n_distill=n_distill,
                n_entities=n_entities, n_heldout=n_heldout)


def training_rows(cell: dict, teacher: dict | None = None, held: list[dict] | None = None) -> list[dict]:
    """The rows CELL trains on. TEACHER: the "teacher" cell's result (for the distillation students);
    HELD: the held-out rows (the leak cell copies its first ones into training)."""
    kind, rows = cell["kind"], pool()
    if kind == "curve":
        return rows[:cell["n"]]
    if kind == "noise":
        return dataprep.add_noise(rows[:cell["n"]], cell["rate"], seed=cell["n"], pool=rows)[0]
    if kind == "duplicates":
        return with_duplicates(rows[:cell["n"]], cell["copied"], cell["times"])
    if kind == "leak":
        return rows[:cell["n"]] + [dict(r) for r in (held or heldout())[:cell["leaked"]]]
    if kind == "entity":
        return split_rows(entity_rows(cell["entities"]), cell["by"])[0]
    if kind == "distill":
        inputs = new_inputs(cell["n"])
        if cell["labels"] == "gold":
            return inputs
        labelled = [{**r, "output": a} for r, a in zip(inputs, teacher["answers"]) if a.strip()]  # no empty label
        return labelled if cell["labels"] == "teacher" else [r for r in labelled if dataprep.verify(r, r["output"])]
    raise ValueError(f"unknown cell kind {kind!r}")


def verdict_string(verdicts) -> str:
    return "".join("1" if v else "0" for v in verdicts)


def run_teacher(base, tok, cell: dict, held: list[dict], model=None, teacher=None) -> dict:
    """The "teacher" cell: TEACHER (default: preference.reference_model, the shipped sft_lora adapter merged
    for the bundled model, a live SFT for another) answers the N new inputs and the held-out rows by greedy
    generation."""

    t0 = time.perf_counter()
    what = "the SFT model given"
    if teacher is None:
        teacher, what = reference_model(base, tok, steps=0, model=model)
    inputs = new_inputs(cell["n"])
    prompts = [data.to_prompt_completion(r, tok)["prompt"] for r in inputs + held]
    answers = answer(teacher, tok, prompts, batch_size=32)
    return {"name": cell["name"], "kind": "teacher", "teacher": what, "answers": answers[:len(inputs)],
            "heldout_answers": answers[len(inputs):], "seconds": round(time.perf_counter() - t0, 1)}


def teacher_wrong(held: list[dict], answers: list[str]) -> list[int]:
    """The held-out rows whose teacher answer is wrong and not empty (an answer a student can copy)."""
    return [i for i, (r, a) in enumerate(zip(held, answers)) if a != r["output"] and a.strip()]


def run_cell(base, tok, cell: dict, held: list[dict], teacher: dict | None = None, lr: float = LR, seed: int = 0,
             device: str = "cpu", model=None, teacher_model=None) -> dict:
    """Train CELL's rows and score it: the held-out rows HELD (an entity cell: its own test rows). TEACHER:
    the "teacher" cell's result, for a student; TEACHER_MODEL: the model a "teacher" cell asks.
    Returns the cell's result (see the module's docstring)."""
    if cell["kind"] == "teacher":
        return run_teacher(base, tok, cell, held, model=model, teacher=teacher_model)
    t0 = time.perf_counter()
    rows = training_rows(cell, teacher, held)
    if rows:
        trained, losses = train(base, tok, rows, cell["steps"], lr, seed, device)
    else:  # a verifier that kept no label (a model that has not learned the task): the student is the base
        trained, losses = base.eval(), []
    out = {**cell, "rows": len(rows), "loss_first": losses[0] if losses else None,
           "loss_last": sum(losses[-5:]) / len(losses[-5:]) if losses else None}
    if cell["kind"] == "entity":
        test = split_rows(entity_rows(cell["entities"]), cell["by"])[1]
        out.update(right=verdict_string(greedy_exact(trained, tok, test)), tasks="".join(r["task"][0] for r in test))
    else:
        out["right"] = verdict_string(greedy_exact(trained, tok, held))
    if cell["kind"] == "distill":
        wrong = teacher_wrong(held, teacher["heldout_answers"])
        copies = greedy_exact(trained, tok, [held[i] for i in wrong], [teacher["heldout_answers"][i] for i in wrong])
        out.update(kept=len(rows), teacher_wrong=wrong, copies_teacher=verdict_string(copies))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def settings(cells: list[dict], n_heldout: int, lr: float = LR, seed: int = 0) -> dict:
    """What a result was computed with (recorded in it, and compared when a cached cell is reused)."""
    return {"cells": [c["name"] for c in cells], "n_heldout": n_heldout, "batch": BATCH, "lr": lr, "seed": seed,
            "epochs": EPOCHS, "sizes": sorted({c["n"] for c in cells if c["kind"] == "curve"}),
            "budget": max((c["steps"] for c in cells if c["kind"] == "curve"), default=None)}


def sweep(base, tok, cells: list[dict], n_heldout: int | None = None, lr: float = LR, seed: int = 0,
          device: str = "cpu", model=None, teacher_model=None, log=None) -> dict:
    """Run CELLS one after another (the teacher before its students; a "same_as" cell copies the cell it
    names) and return the result: {"settings", "heldout_tasks": one letter per held-out row, "cells":
    {name: cell result}}. scripts/data_curve.py runs the shipped sweep this way, in several processes."""
    held = heldout(n_heldout)
    done: dict[str, dict] = {}
    for cell in sorted(cells, key=lambda c: (c["kind"] == "distill", "same_as" in c)):
        if "same_as" in cell:
            done[cell["name"]] = {**done[cell["same_as"]], **cell}
        else:
            done[cell["name"]] = run_cell(base, tok, cell, held, done.get("teacher"), lr, seed, device, model,
                                          teacher_model)
        if log:
            log(describe_cell(done[cell["name"]]))
    return assemble(done, cells, held, settings(cells, len(held), lr, seed))


def assemble(done: dict, cells: list[dict], held: list[dict], about: dict) -> dict:
    return {"settings": about, "heldout_tasks": "".join(r["task"][0] for r in held),
            "cells": {c["name"]: done[c["name"]] for c in cells}}


def describe_cell(res: dict) -> str:
    if res["kind"] == "teacher":
        return f"teacher: {len(res['answers'])} + {len(res['heldout_answers'])} answers in {res['seconds']} s"
    if res["loss_first"] is None:
        return f"{res['name']}: no rows to train on, the base model scores {res['right'].count('1')}/{len(res['right'])}"
    return (f"{res['name']}: {res['rows']} rows, {res['steps']} steps, loss {res['loss_first']:.3f} -> "
            f"{res['loss_last']:.3f}, exact {res['right'].count('1')}/{len(res['right'])}, {res.get('seconds', 0)} s")


# ----------------------------------------------------------------------------- the shipped result, or a live one

def load_result() -> dict:
    """The shipped sweep of the bundled model (labkit/assets/results/data_curve.json)."""

    return load_results(RESULT)


def result_for(model, base, tok, steps: int = 0, n_heldout: int | None = None, teacher=None, log=None) -> tuple[dict, str]:
    """The sweep lesson 07 reads, and a line saying where it comes from.

    STEPS == 0 and the bundled MODEL: the shipped sweep. Any other model (labkit.models.shipped_or_live:
    models.LIVE_STEPS steps), or STEPS > 0: live_plan(STEPS) trained here on BASE, scored on the first
    N_HELDOUT held-out rows, with TEACHER (a model) labelling the distillation inputs."""

    steps, note = shipped_or_live(steps, model, "data sweep (scripts/data_curve.py)", "CURVE_STEPS")
    if steps == 0:
        res = load_result()
        ctx, runs = res["context"], [c for c in res["cells"].values() if "same_as" not in c]
        hours = sum(c["seconds"] for c in runs) / 3600
        return res, (f"shipped: {len(runs)} runs by {res['made_by']} on the bundled model, {ctx['date']}, "
                     f"{hours:.1f} h of runs (several at a time) on a shared {ctx['cpus']}-core CPU")
    res = sweep(base, tok, live_plan(steps, n_heldout=n_heldout), n_heldout, model=model, teacher_model=teacher, log=log)
    line = f"LIVE: a small sweep of {len(res['cells'])} runs, {steps} steps each, trained here"
    return res, (note + "\n" + line if note else line)
