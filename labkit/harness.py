"""EleutherAI's lm-evaluation-harness (`lm_eval`) on the course's own tasks, and labkit's metrics beside it.

The course ships three lm-eval tasks under labkit/assets/lm_eval/, generated from the course's data by
``write_tasks`` (a test keeps the shipped copies equal to what it writes):

- ``labkit_instructions`` (generate_until, exact_match): the held-out instructions, answered greedily and
  cut at the chat template's turn end; lm-eval's side of ``labkit.evaluate.score``.
- ``labkit_risk`` (multiple_choice, acc): the held-out risk questions, the answer picked as the label
  whose log-likelihood is highest; lm-eval's side of ``choice_accuracy``.
- ``labkit_general`` (loglikelihood_rolling: word and byte perplexity, bits per byte): held-out general
  text; lm-eval's side of ``labkit.evaluate.perplexity`` (per token), converted by ``text_nll``.

Each YAML reads a JSONL file beside it through ``course_data.py`` (lm-eval's ``custom_dataset``), so the
folder works from any working directory. What depends on the model (the turn end that stops generation,
the text the template writes before an answer) comes from its tokenizer: ``tasks_for(tok)`` is the shipped
folder for the bundled model and a folder written for any other.

    folder = harness.tasks_for(tok)
    lm = HFLM(pretrained=path, peft=adapter, dtype="float32", device="cpu")
    out = simple_evaluate(model=lm, tasks=list(harness.TASKS), limit=40, apply_chat_template=True,
                          task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    harness.metrics(out)     # {"labkit_instructions": {"exact_match": ...}, ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path

from . import env, guard
from .chat import answer_prefix, document_start, encode, render_prompt, stop_strings
from .data import read_jsonl, user_message
from .dataprep import ngram_overlap, question
from .evaluate import answer, exact_matches, perplexity, score
from .models import is_bundled, load_tokenizer
from .sft import adapter_dir

TASKS_DIR = Path(__file__).resolve().parent / "assets" / "lm_eval"
GENERATE, CHOICE, ROLLING = "labkit_instructions", "labkit_risk", "labkit_general"
TASKS = (GENERATE, CHOICE, ROLLING)
RISK_LABELS = ("low", "medium", "high")
MAX_GEN_TOKS = 48                      # labkit.evaluate.score's max_new_tokens

# lm-eval's custom_dataset: the task's JSONL, found beside the YAML whatever the working directory.
LOADER = '''"""Written by labkit.harness.write_tasks: lm-eval's custom_dataset for the course's task files."""
from pathlib import Path


def load_jsonl(data_file, **_):
    """The JSONL DATA_FILE beside this module as a datasets.DatasetDict with one split, "test"."""
    import json

    from datasets import Dataset, DatasetDict

    lines = (Path(__file__).resolve().parent / data_file).read_text().splitlines()
    return DatasetDict({"test": Dataset.from_list([json.loads(line) for line in lines if line.strip()])})
'''


# ----------------------------------------------------------------------------- the task files

def task_rows() -> dict[str, list[dict]]:
    """The rows each task reads, from the course's held-out data: {task name: [row, ...]}.

    GENERATE: {"question", "answer", "family"} for every row of instructions_eval.jsonl (in order);
    CHOICE: {"question", "label"} (index into RISK_LABELS) for its risk rows; ROLLING: {"text"} for
    general_eval.jsonl."""

    inst = read_jsonl("instructions_eval.jsonl")
    risk = [r for r in inst if r["task"] == "risk"]
    return {GENERATE: [{"question": user_message(r), "answer": r["output"].strip(), "family": r["task"]} for r in inst],
            CHOICE: [{"question": user_message(r), "label": RISK_LABELS.index(r["output"].split(":")[1].strip())}
                     for r in risk],
            ROLLING: [{"text": r["text"]} for r in read_jsonl("general_eval.jsonl")]}


def risk_choices(tok) -> list[str]:
    """The continuations the multiple-choice task scores: each label as the template writes an answer
    (its answer prefix, e.g. the bundled model's leading space, then "Risk: low")."""

    prefix = answer_prefix(tok) if getattr(tok, "chat_template", None) else " "
    return [f"{prefix}Risk: {label}" for label in RISK_LABELS]


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a YAML double-quoted scalar


def task_yaml(name: str, tok) -> str:
    """The lm-eval task definition NAME (one of TASKS) for TOK's chat template, as YAML text."""

    guard.one_of("task", name, TASKS)
    head = (f"# Written by labkit.harness.write_tasks from the course's held-out data; do not edit by hand.\n"
            f"task: {name}\ncustom_dataset: !function course_data.load_jsonl\n"
            f"dataset_kwargs:\n  data_file: {name}.jsonl\ntest_split: test\n")
    if name == GENERATE:
        until = stop_strings(tok) if getattr(tok, "chat_template", None) else [tok.eos_token]
        body = ("output_type: generate_until\n"
                'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
                "generation_kwargs:\n"
                f"  until: [{', '.join(_yaml_str(s) for s in until)}]   # the turn end and EOS: where an answer stops\n"
                f"  max_gen_toks: {MAX_GEN_TOKS}\n  do_sample: false\n"
                "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
                '    regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]   # strip, as labkit.evaluate.score does\n')
    elif name == CHOICE:
        body = ("output_type: multiple_choice\n"
                'doc_to_text: "{{question}}"\n'
                f"doc_to_choice: [{', '.join(_yaml_str(c) for c in risk_choices(tok))}]\n"
                'doc_to_target: "{{label}}"\n'
                'target_delimiter: ""   # the choices carry the answer prefix (lm-eval drops the delimiter under a chat template)\n'
                "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    else:
        body = ("output_type: loglikelihood_rolling\n"
                'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    return head + body + "metadata:\n  version: 1.0\n"


def task_files(tok) -> dict[str, str]:
    """{file name: text} of the task folder for TOK: a YAML and a JSONL per task, and course_data.py."""
    files = {"course_data.py": LOADER}
    for name, rows in task_rows().items():
        files[f"{name}.yaml"] = task_yaml(name, tok)
        files[f"{name}.jsonl"] = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    return files


def write_tasks(folder: str | os.PathLike = TASKS_DIR, tok=None) -> list[Path]:
    """(Re)write the task folder for TOK (default: the bundled model's tokenizer, i.e. the shipped copies
    in labkit/assets/lm_eval/); deterministic. Returns the paths written."""
    if tok is None:

        tok = load_tokenizer()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in task_files(tok).items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        written.append(path)
    return written


def tasks_for(tok) -> Path:
    """The task folder for TOK: the shipped one when its files are what TOK needs (the bundled model),
    else a folder written for TOK under the temporary directory. Also quiets lm-eval (``quiet``)."""
    quiet()
    files = task_files(tok)
    if all((TASKS_DIR / n).is_file() and (TASKS_DIR / n).read_text() == t for n, t in files.items()):
        return TASKS_DIR
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "labkit_lm_eval" / digest
    write_tasks(folder, tok)
    return folder


# ----------------------------------------------------------------------------- running lm-eval quietly

def _silent_tqdm(*args, **kwargs):
    from tqdm import tqdm

    kwargs["disable"] = True
    return tqdm(*args, **kwargs)


def _versions_only(storage: dict) -> None:
    """lm-eval's add_env_info without torch's collect_env report (subprocesses: 0.5 s a run on a quiet
    2-core machine, about 2 s on a busy one)."""
    found = env.versions(("transformers", "lm_eval"))
    storage.update(pretty_env_info="(skipped by labkit.harness)", transformers_version=found["transformers"],
                   lm_eval_version=found["lm_eval"], upper_git_hash=None)


def quiet() -> None:
    """Silence lm-eval: its INFO/WARNING logging, its warnings and progress bars; and skip the environment
    report (torch's collect_env, `git describe`) it adds to every result, which costs 0.5-2 s a run and
    writes git's errors outside a repository. The scores are untouched."""
    import lm_eval.api.metrics
    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.evaluator
    import lm_eval.models.huggingface

    for name in ("lm_eval", "lm-eval", "evaluate", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for mod in ("lm_eval", "evaluate", "datasets", "sacrebleu"):
        warnings.filterwarnings("ignore", module=mod)
    for mod in (lm_eval.api.metrics, lm_eval.api.model, lm_eval.api.task, lm_eval.models.huggingface):
        mod.tqdm = _silent_tqdm
    lm_eval.evaluator.add_env_info = _versions_only
    lm_eval.evaluator.get_git_commit_hash = lambda: None


def metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from simple_evaluate's results (lm-eval keys metrics "acc,none")."""
    out = {}
    for task, values in results["results"].items():
        out[task] = {k.split(",")[0]: v for k, v in values.items()
                     if "," in k and not k.split(",")[0].endswith("_stderr") and isinstance(v, (int, float))}
    return out


def generations(results: dict, task: str = GENERATE) -> list[str]:
    """lm-eval's generated answers of TASK, in the task's row order (needs log_samples=True)."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [s["filtered_resps"][0] if isinstance(s["filtered_resps"][0], str) else s["filtered_resps"][0][0]
            for s in samples]


def choices_picked(results: dict, task: str = CHOICE) -> list[int]:
    """lm-eval's chosen option per row of the multiple-choice TASK (argmax of the log-likelihoods)."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) for s in samples]


def command_line(model_path, tasks_dir, adapter=None, limit: int | None = None, chat: bool = False,
                 device: str = "cpu") -> str:
    """The `lm_eval` command that runs the course's tasks on MODEL_PATH (+ ADAPTER) from a shell."""
    args = f"pretrained={model_path}" + (f",peft={adapter}" if adapter else "") + ",dtype=float32"
    line = (f"lm_eval --model hf --model_args {args} --tasks {','.join(TASKS)} --include_path {tasks_dir} "
            f"--device {device} --batch_size 16")
    return line + (f" --limit {limit}" if limit else "") + (" --apply_chat_template" if chat else "")


HUB_TASKS = ("ifeval", "gsm8k", "hellaswag")   # instruction following, grade-school maths, sentence endings


def hub_command(model_id: str = "<hub id>", tasks=HUB_TASKS) -> str:
    """The command for a Hub model on lm-eval's standard tasks (downloads the model and the datasets)."""
    return (f"lm_eval --model hf --model_args pretrained={model_id},dtype=bfloat16 --tasks {','.join(tasks)} "
            "--device cuda:0 --batch_size auto --apply_chat_template --output_path results/")


# ----------------------------------------------------------------------------- labkit's side

def choice_logprobs(model, tok, context: str, continuations: list[str]) -> list[float]:
    """log p(continuation | CONTEXT) for each of CONTINUATIONS: the sum over its tokens, one float each.

    Split as lm-eval splits a loglikelihood request: whitespace that ends CONTEXT (a template's newline)
    moves to the front of the continuation; context + continuation is encoded whole (BOS once,
    labkit.chat.encode), and the continuation's tokens are those after the context's own encoding."""
    import torch

    stripped = context.rstrip()
    moved = context[len(stripped):]
    ctx = encode(tok, stripped)
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for cont in continuations:
            ids = encode(tok, stripped + moved + cont)
            if len(ids) <= len(ctx):
                raise ValueError(f"{cont!r} adds no token to the context; there is nothing to score.")
            x = torch.tensor([ids], device=device)
            logp = torch.log_softmax(model(x).logits[0, :-1].float(), dim=-1)
            target = x[0, 1:]
            out.append(logp[len(ctx) - 1:].gather(1, target[len(ctx) - 1:, None]).sum().item())
    return out


def choice_accuracy(model, tok, contexts: list[str], continuations: list[str], labels: list[int]) -> dict:
    """Multiple choice by log-likelihood: for each context the continuation with the highest
    choice_logprobs is picked. Returns {"acc": share picked == label, "picked": [index per context]}."""
    if len(contexts) != len(labels) or not contexts:
        raise ValueError("choice_accuracy needs one label per context, and at least one context.")
    was = model.training
    model.eval()
    picked = []
    for c in contexts:
        lp = choice_logprobs(model, tok, c, continuations)
        picked.append(max(range(len(lp)), key=lp.__getitem__))
    model.train(was)
    return {"acc": sum(p == y for p, y in zip(picked, labels)) / len(labels), "picked": picked}


def text_nll(model, tok, texts: list[str]) -> dict:
    """The summed negative log-likelihood of TEXTS (each after the document start, as
    labkit.evaluate.perplexity) and what it is divided by: {"nll", "tokens", "words", "bytes",
    "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}. Words are
    whitespace-separated pieces and bytes UTF-8 bytes, lm-eval's counts for loglikelihood_rolling."""
    import re

    start = len(document_start(tok))
    tokens = sum(start + len(tok(t, add_special_tokens=False)["input_ids"]) - 1 for t in texts)  # predicted
    nll = math.log(perplexity(model, tok, texts, max_tokens=10 ** 9)) * tokens
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"nll": nll, "tokens": tokens, "words": words, "bytes": nbytes,
            "token_perplexity": math.exp(nll / tokens), "word_perplexity": math.exp(nll / words),
            "byte_perplexity": math.exp(nll / nbytes), "bits_per_byte": nll / nbytes / math.log(2)}


def rolling_starts(tok, text: str) -> tuple[list[str], list[str]]:
    """How each side starts scoring TEXT, as token strings: (lm-eval's, labkit's) first three tokens.

    lm-eval's loglikelihood_rolling puts a prefix token (BOS, else EOS) before the tokenizer's own encoding
    of the text (special tokens included); labkit.evaluate.perplexity puts the document start (BOS, or
    nothing) before the text encoded without special tokens. Equal for the bundled model; a tokenizer with
    no BOS (ChatML) or one that adds BOS itself (Gemma) makes them differ."""

    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    theirs = [prefix] + tok(text)["input_ids"]
    ours = document_start(tok) + tok(text, add_special_tokens=False)["input_ids"]
    return tok.convert_ids_to_tokens(theirs[:3]), tok.convert_ids_to_tokens(ours[:3])


def compare(results: dict, model, tok, limit: int | None = None, chat: bool = True) -> dict:
    """lm-eval's numbers in RESULTS (simple_evaluate on TASKS with log_samples, LIMIT rows, the chat
    template when CHAT) beside labkit's own on the same rows and the same MODEL:

    {"exact_match": (lm-eval, labkit.evaluate.score), "same_answers": rows whose answers are equal once
     lm-eval's are stripped, "first_answer": (lm-eval's as generated, labkit's),
     "acc": (lm-eval, choice_accuracy), "same_choices": rows where both pick the same label,
     "byte_perplexity", "word_perplexity": (lm-eval, text_nll), "token_perplexity": labkit's
     (labkit.evaluate.perplexity; lm-eval reports none), "n": {task: rows},
     "rolling_starts": how each side starts a text (rolling_starts; they differ for some tokenizers)}."""

    rows = {k: v[:limit] for k, v in task_rows().items()}
    got = metrics(results)
    inst = read_jsonl("instructions_eval.jsonl")[:len(rows[GENERATE])]
    if chat:
        ours = score(model, tok, inst, max_new_tokens=MAX_GEN_TOKS)["answers"]
    else:

        ours = answer(model, tok, [r["question"] for r in rows[GENERATE]], MAX_GEN_TOKS)
    theirs = [g.strip() for g in generations(results)]
    refs = [r["answer"] for r in rows[GENERATE]]
    contexts = [render_prompt(tok, r["question"]) if chat else r["question"] for r in rows[CHOICE]]
    mc = choice_accuracy(model, tok, contexts, risk_choices(tok), [r["label"] for r in rows[CHOICE]])
    nll = text_nll(model, tok, [r["text"] for r in rows[ROLLING]])
    return {"exact_match": (float(got[GENERATE]["exact_match"]), sum(exact_matches(ours, refs, normalize=False)) / len(refs)),
            "same_answers": sum(a == b for a, b in zip(theirs, ours)),
            "first_answer": (generations(results)[0], ours[0]),
            "acc": (float(got[CHOICE]["acc"]), mc["acc"]),
            "same_choices": sum(a == b for a, b in zip(choices_picked(results), mc["picked"])),
            "byte_perplexity": (float(got[ROLLING]["byte_perplexity"]), nll["byte_perplexity"]),
            "word_perplexity": (float(got[ROLLING]["word_perplexity"]), nll["word_perplexity"]),
            "token_perplexity": nll["token_perplexity"], "n": {k: len(v) for k, v in rows.items()},
            "rolling_starts": rolling_starts(tok, rows[ROLLING][0]["text"])}


def describe_comparison(c: dict) -> list[str]:
    """compare()'s result as a table: metric, lm-eval, labkit, rows that agree."""
    n, w = c["n"], 32
    return [f"{'':<{w}}{'lm-eval':>9}{'labkit':>9}   agreement",
            f"{'exact match (generate_until)':<{w}}{c['exact_match'][0]:>9.3f}{c['exact_match'][1]:>9.3f}"
            f"   same answer on {c['same_answers']}/{n[GENERATE]} rows",
            f"{'risk accuracy (multiple_choice)':<{w}}{c['acc'][0]:>9.3f}{c['acc'][1]:>9.3f}"
            f"   same choice on {c['same_choices']}/{n[CHOICE]} rows",
            f"{'byte perplexity (rolling)':<{w}}{c['byte_perplexity'][0]:>9.5g}{c['byte_perplexity'][1]:>9.5g}"
            f"   on {n[ROLLING]} texts",
            f"{'word perplexity (rolling)':<{w}}{c['word_perplexity'][0]:>9.5g}{c['word_perplexity'][1]:>9.5g}",
            f"{'token perplexity':<{w}}{'-':>9}{c['token_perplexity']:>9.5g}   (lm-eval has none: tokenizers differ)",
            f"first answer as generated: lm-eval {c['first_answer'][0]!r}, labkit {c['first_answer'][1]!r}"] + (
        [f"the perplexities differ because the texts start differently: lm-eval scores {c['rolling_starts'][0]}..., "
         f"labkit {c['rolling_starts'][1]}..."] if c["rolling_starts"][0] != c["rolling_starts"][1] else [])


def sft_adapter(model_name, live=None) -> tuple[str, str]:
    """(adapter folder, a line to print) for the harness's fine-tuned model: the shipped SFT adapter
    (labkit/assets/adapters/sft_lora) for the bundled model; for any other MODEL_NAME the shipped adapter
    does not fit, so LIVE (a peft model trained in the lesson) is saved to a temporary folder instead."""

    if is_bundled(model_name):
        return str(adapter_dir("sft_lora")), ""
    if live is None:
        raise ValueError(f"MODEL={str(model_name)!r} has no shipped SFT adapter: pass a live peft model.")
    folder = tempfile.mkdtemp(prefix="labkit_adapter_")
    live.save_pretrained(folder)
    return folder, (f"MODEL={str(model_name)!r} is not the bundled model, so the shipped SFT adapter does not fit it: "
                    "the harness evaluates this lesson's live fine-tune instead (saved to a temporary folder).")


def contamination(n: int = 13, threshold: float = 0.5, held: list[dict] | None = None,
                  train: list[dict] | None = None) -> list[str]:
    """Lesson 07's n-gram check run on the task data against the training data: for each task family, the
    share of each HELD row's word N-grams (question and answer) found in TRAIN (default: the task rows of
    instructions_eval.jsonl against instructions_train.jsonl; labkit.dataprep.ngram_overlap), its median
    and maximum, and the rows at or above THRESHOLD; then exact repeats. Returns the lines to print."""
    import statistics

    train = read_jsonl("instructions_train.jsonl") if train is None else train
    held = read_jsonl("instructions_eval.jsonl") if held is None else held
    seen = [question(r) + "\n" + r["output"] for r in train]
    overlap = ngram_overlap([question(r) + "\n" + r["output"] for r in held], seen, n)
    lines = [f"{'family':<10}{'rows':>5}{'median':>8}{'max':>6}   rows with >= {threshold:.0%} of their {n}-grams in training"]
    for fam in dict.fromkeys(r["task"] for r in held):
        ov = [o for r, o in zip(held, overlap) if r["task"] == fam]
        lines.append(f"{fam:<10}{len(ov):>5}{statistics.median(ov):>8.2f}{max(ov):>6.2f}   {sum(o >= threshold for o in ov)}")
    repeats = len({question(r) for r in held} & {question(r) for r in train})
    lines.append(f"held-out questions repeated word for word in training: {repeats}")
    return lines


if __name__ == "__main__":  # python -m labkit.harness: rewrite the shipped task folder
    for path in write_tasks():
        print(path)
