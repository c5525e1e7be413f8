"""labkit.harness: the course's lm-eval task files (shipped copies = what write_tasks writes, per tokenizer),
labkit's own multiple-choice and perplexity scoring, and lm-eval's numbers = labkit's on the same rows."""

import math

import pytest
import torch

from labkit import data, harness, models


def test_the_shipped_task_files_are_what_write_tasks_writes(base):
    _, tok = base
    files = harness.task_files(tok)
    shipped = {p.name for p in harness.TASKS_DIR.iterdir() if p.is_file()}
    assert shipped == set(files), "run `python -m labkit.harness`"
    stale = [n for n, text in files.items() if (harness.TASKS_DIR / n).read_text() != text]
    assert not stale, f"{stale} differ from labkit.harness.task_files: run `python -m labkit.harness`"
    assert harness.tasks_for(tok) == harness.TASKS_DIR


def test_task_rows_come_from_the_held_out_data():
    rows = harness.task_rows()
    held = data.read_jsonl("instructions_eval.jsonl")
    assert [r["answer"] for r in rows[harness.GENERATE]] == [r["output"].strip() for r in held]
    risk = [r for r in held if r["task"] == "risk"]
    assert len(rows[harness.CHOICE]) == len(risk) > 0
    assert [f"Risk: {harness.RISK_LABELS[r['label']]}" for r in rows[harness.CHOICE]] == [r["output"] for r in risk]
    assert len(rows[harness.ROLLING]) == len(data.read_jsonl("general_eval.jsonl"))


def test_the_task_files_follow_each_models_template(hub_model):
    from labkit import chat

    _, folder = hub_model
    tok = models.load_tokenizer(folder)
    gen = harness.task_yaml(harness.GENERATE, tok)
    for stop in chat.stop_strings(tok):
        assert f'"{stop}"' in gen
    choice = harness.task_yaml(harness.CHOICE, tok)
    assert all(f'"{chat.answer_prefix(tok)}Risk: {label}"' in choice for label in harness.RISK_LABELS)
    written = harness.tasks_for(tok)
    assert written != harness.TASKS_DIR and (written / "labkit_instructions.yaml").read_text() == gen


def test_the_bundled_tasks_stop_at_the_turn_end_and_keep_the_answer_prefix(base):
    _, tok = base
    gen = harness.task_yaml(harness.GENERATE, tok)
    assert 'until: ["<|end|>", "<|endoftext|>"]' in gen and "max_gen_toks: 48" in gen
    assert harness.risk_choices(tok) == [" Risk: low", " Risk: medium", " Risk: high"]
    with pytest.raises(ValueError):
        harness.task_yaml("hellaswag", tok)


def test_lm_eval_loads_the_course_tasks_offline(base):
    from lm_eval.tasks import TaskManager, get_task_dict

    _, tok = base
    manager = TaskManager(include_path=str(harness.tasks_for(tok)), include_defaults=False)
    tasks = get_task_dict(list(harness.TASKS), manager)
    rows = harness.task_rows()
    for name in harness.TASKS:
        assert len(tasks[name].dataset["test"]) == len(rows[name])
    assert tasks[harness.CHOICE].config.target_delimiter == ""


def test_every_task_metric_is_lm_evals_own_so_none_falls_through_to_evaluate_load():
    """A metric lm-eval does not register (rouge, say) is fetched with evaluate.load, which downloads it:
    offline that crashes. Every metric the course's tasks name must be in lm-eval's own registry."""
    import re

    import lm_eval.api.metrics  # noqa: F401  (fills the registry)
    from lm_eval.api.registry import METRIC_REGISTRY

    named = {m for path in harness.TASKS_DIR.glob("*.yaml") for m in re.findall(r"- metric: (\w+)", path.read_text())}
    assert named == {"exact_match", "acc", "word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert all(m in METRIC_REGISTRY for m in named), [m for m in named if m not in METRIC_REGISTRY]


def test_choice_logprobs_is_the_summed_log_probability_of_the_continuation(base):
    model, tok = base
    context, cont = "Monthly income: $4,200\nRisk:", " high"
    (lp,) = harness.choice_logprobs(model, tok, context, [cont])
    ctx = tok(context)["input_ids"]
    ids = tok(context + cont)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    by_hand = sum(logp[t - 1, ids[t]].item() for t in range(len(ctx), len(ids)))
    assert lp == pytest.approx(by_hand, abs=1e-4) and lp < 0


@pytest.mark.parametrize("kind", ["bundled", "llama-chatml", "gpt2", "gemma-style"])
def test_choice_logprobs_equal_lm_evals_own_loglikelihood(kind, base, hub_models):
    """The same numbers as HFLM.loglikelihood, request by request, for every template: the bundled one, a
    ChatML prompt that ends in a newline (lm-eval moves it into the continuation), Gemma's written BOS."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from labkit import chat

    model, tok = base if kind == "bundled" else models.load_base(hub_models[kind], device="cpu", dtype="float32")
    harness.quiet()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    context = chat.render_prompt(tok, harness.task_rows()[harness.CHOICE][0]["question"])
    conts = harness.risk_choices(tok)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(context, c), idx=i) for i, c in enumerate(conts)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests)]
    assert harness.choice_logprobs(model, tok, context, conts) == pytest.approx(theirs, abs=1e-4)


def test_choice_accuracy_picks_the_most_likely_label(base):
    model, tok = base
    contexts = ["The sky is", "Two plus two is"]
    conts = [" blue", " four", " zzzz qqqq"]
    res = harness.choice_accuracy(model, tok, contexts, conts, [0, 1])
    expected = [max(range(3), key=lambda i: harness.choice_logprobs(model, tok, c, conts)[i]) for c in contexts]
    assert res["picked"] == expected
    assert res["acc"] == sum(p == y for p, y in zip(expected, [0, 1])) / 2
    with pytest.raises(ValueError):
        harness.choice_accuracy(model, tok, contexts, conts, [0])


def test_text_nll_is_labkits_perplexity_in_other_units(base):
    from labkit import evaluate

    model, tok = base
    texts = [r["text"] for r in harness.task_rows()[harness.ROLLING][:5]]
    res = harness.text_nll(model, tok, texts)
    assert res["token_perplexity"] == pytest.approx(evaluate.perplexity(model, tok, texts, max_tokens=10 ** 9), rel=1e-6)
    assert res["bytes"] == sum(len(t.encode()) for t in texts) and res["words"] == sum(len(t.split()) for t in texts)
    assert math.log(res["byte_perplexity"]) * res["bytes"] == pytest.approx(res["nll"], rel=1e-9)
    assert res["bits_per_byte"] == pytest.approx(math.log2(res["byte_perplexity"]))
    assert res["word_perplexity"] > res["token_perplexity"] > res["byte_perplexity"] > 1  # more tokens than words


def test_the_contamination_check_finds_copied_rows():
    lines = harness.contamination()
    assert lines[-1].endswith(": 0") and all(line.split()[-1] == "0" for line in lines[1:-1])
    train = data.read_jsonl("instructions_train.jsonl")
    leaked = harness.contamination(held=train[:5] + data.read_jsonl("instructions_eval.jsonl"), train=train)
    assert leaked[-1].endswith(": 5")
    assert sum(int(line.split()[-1]) for line in leaked[1:-1]) == 5


def test_the_adapter_and_the_command_line():
    from labkit import sft

    path, note = harness.sft_adapter("bundled")
    assert path == str(sft.adapter_dir("sft_lora")) and note == ""
    with pytest.raises(ValueError, match="live"):
        harness.sft_adapter("/no/such/model")
    line = harness.command_line("/m", harness.TASKS_DIR, adapter=path, limit=40, chat=True)
    assert line.startswith("lm_eval --model hf --model_args pretrained=/m,peft=") and "--apply_chat_template" in line
    assert f"--include_path {harness.TASKS_DIR}" in line and "--tasks " + ",".join(harness.TASKS) in line
    assert "--apply_chat_template" not in harness.command_line("/m", harness.TASKS_DIR)
    assert "ifeval,gsm8k,hellaswag" in harness.hub_command("org/name")


@pytest.mark.slow
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_lm_eval_gives_labkits_numbers_on_the_same_rows(base, chat, capfd):
    """The equality the lesson prints: lm-eval's exact match, accuracy and perplexities on the shipped SFT
    adapter = labkit's, row by row, with and without the chat template; and lm-eval runs quietly."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _, tok = base
    folder = harness.tasks_for(tok)
    capfd.readouterr()
    lm = HFLM(pretrained=str(models.BASE_MODEL_DIR), peft=harness.sft_adapter("bundled")[0], dtype="float32",
              device="cpu", batch_size=16)
    out = simple_evaluate(model=lm, tasks=list(harness.TASKS), limit=12, apply_chat_template=chat, bootstrap_iters=0,
                          task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == "", "lm-eval printed something: labkit.harness.quiet missed it"
    c = harness.compare(out, lm.model, tok, limit=12, chat=chat)
    assert c["n"] == {harness.GENERATE: 12, harness.CHOICE: 12, harness.ROLLING: 12}
    assert c["same_answers"] == 12 and c["exact_match"][0] == c["exact_match"][1]
    assert c["same_choices"] == 12 and c["acc"][0] == c["acc"][1]
    assert c["byte_perplexity"][0] == pytest.approx(c["byte_perplexity"][1], rel=1e-6)
    assert c["word_perplexity"][0] == pytest.approx(c["word_perplexity"][1], rel=1e-6)
    if chat:
        assert c["exact_match"][0] > 0.5 and c["acc"][0] > 0.5  # the adapter answers in its template
    lines = harness.describe_comparison(c)
    assert "same answer on 12/12 rows" in lines[1] and "same choice on 12/12 rows" in lines[2]


@pytest.mark.slow
def test_lm_eval_and_labkit_agree_on_hub_style_models_or_say_why_not(hub_model):
    """Any MODEL: the same greedy answers and the same choices; the same perplexity where both sides start a
    text with the same tokens, and a printed reason where they do not (no BOS: lm-eval prefixes EOS; a
    tokenizer that adds BOS itself: lm-eval scores a second one)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    kind, folder = hub_model
    model, tok = models.load_base(folder, device="cpu", dtype="float32")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16)
    out = simple_evaluate(model=lm, tasks=list(harness.TASKS), limit=4, apply_chat_template=True, bootstrap_iters=0,
                          task_manager=TaskManager(include_path=str(harness.tasks_for(tok)), include_defaults=False))
    c = harness.compare(out, model, tok, limit=4)
    assert c["same_answers"] == 4 and c["same_choices"] == 4 and c["acc"][0] == c["acc"][1]
    starts_differ = c["rolling_starts"][0] != c["rolling_starts"][1]
    assert starts_differ == (kind != "gpt2"), c["rolling_starts"]   # GPT-2: BOS = EOS, never added by encode
    if not starts_differ:
        assert c["byte_perplexity"][0] == pytest.approx(c["byte_perplexity"][1], rel=1e-5)
    else:
        assert "differ because the texts start differently" in harness.describe_comparison(c)[-1]
