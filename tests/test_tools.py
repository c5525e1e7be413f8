"""labkit.tools and the bundled template's tool support (lesson 12)."""

import json
import subprocess
from pathlib import Path

import pytest
from labkit import data, models, sft, tools

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "labkit" / "assets" / "base_model" / "chat_template.jinja"
# The template every lesson was written against before tool support (commit 0dc44f8), character for character.
OLD_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|assistant|>' }}{% generation %}"
    "{{ ' ' + message['content'] }}{{ '<|end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("bundled")


def _all_bundled_conversations():
    """Every conversation the course's bundled data gives, as lessons render them."""
    convs = []
    for split in ("train", "eval", "test"):
        for row in data.read_jsonl(f"instructions_{split}.jsonl"):
            convs.append(data.to_messages(row))
        for row in data.read_jsonl(f"preferences_{split}.jsonl"):
            for side in ("chosen", "rejected"):
                convs.append([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[side]}])
    convs.append([{"role": "system", "content": "Be brief."}] + convs[0])
    convs.append([{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}])  # empty answer: " <|end|>"
    return convs


def test_old_template_is_the_committed_one():
    old = subprocess.run(["git", "show", "0dc44f8:labkit/assets/base_model/chat_template.jinja"], cwd=ROOT,
                         capture_output=True, text=True)
    if old.returncode == 0:
        assert old.stdout == OLD_TEMPLATE


def test_template_renders_every_conversation_without_tools_byte_identically(tok):
    convs = _all_bundled_conversations()
    assert len(convs) > 3000
    new = TEMPLATE.read_text()
    assert new != OLD_TEMPLATE  # it did gain tool support
    for conv in convs:
        for gen, part in ((False, conv), (True, conv[:-1])):
            a = tok.apply_chat_template(part, tokenize=False, add_generation_prompt=gen, chat_template=OLD_TEMPLATE)
            b = tok.apply_chat_template(part, tokenize=False, add_generation_prompt=gen, chat_template=new)
            assert a == b, (conv, gen)
    for conv in convs[:50]:  # the {% generation %} spans (trl's assistant_only_loss) are the same too
        a = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                    chat_template=OLD_TEMPLATE)
        b = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert a["input_ids"] == b["input_ids"] and a["assistant_masks"] == b["assistant_masks"]


def test_template_renders_tools_calls_and_results(tok):
    row = tools.dti_rows([data.DTI_EXAMPLE])[0]
    text = tok.apply_chat_template(tools.tool_conversation(row), tools=tools.schemas(), tokenize=False)
    assert "debt_to_income(monthly_debts: string, monthly_income: string)" in text
    assert "monthly_payment(loan_amount: string, annual_rate: number, years: integer)" in text
    assert ('<|assistant|> <tool_call>{"name": "debt_to_income", "arguments": {"monthly_debts": "$1,500", '
            '"monthly_income": "$5,000"}}</tool_call><|end|>') in text
    assert "<|user|>\n<tool_response>30%</tool_response><|end|>" in text
    assert tools.supports_tools(tok)
    # OpenAI-style arguments as a JSON string render the same
    conv = tools.tool_conversation(row)
    conv[1]["tool_calls"][0]["function"]["arguments"] = json.dumps(row["call"][1])
    assert tok.apply_chat_template(conv, tools=tools.schemas(), tokenize=False) == text


def test_schema_comes_from_type_hints_and_docstring():
    s = {x["function"]["name"]: x["function"] for x in tools.schemas()}
    p = s["monthly_payment"]["parameters"]
    assert p["properties"]["annual_rate"]["type"] == "number" and p["properties"]["years"]["type"] == "integer"
    assert p["required"] == ["loan_amount", "annual_rate", "years"]
    assert "e.g. 6.5" in p["properties"]["annual_rate"]["description"]


def test_tools_compute_the_datasets_answers():
    for row in tools.dti_rows(data.read_jsonl("instructions_eval.jsonl")):
        name, args = row["call"]
        assert tools.final_value(row["output"]) == tools.TOOLS[name](**args)
    for row in tools.payment_rows(30, seed=5):
        assert tools.final_value(row["output"]) == tools.monthly_payment(**row["call"][1])
    assert tools.monthly_payment("$100,000", 6.0, 30) == "$600"   # the textbook figure, 599.55
    assert tools.debt_to_income("$1,500", "$5,000") == "30%"


@pytest.mark.parametrize("text, error", [
    ('<tool_call>{"name": "debt_to_income", "arguments": {"monthly_debts": "$1"</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "debt_to_income"', "no closing"),
    ('<tool_call>{"name": "os.system", "arguments": {"command": "ls"}}</tool_call>', "no tool named 'os.system'"),
    ('<tool_call>{"name": "monthly_payment", "arguments": {"loan_amount": "$1,000", "annual_rate": "6", "years": 30}}'
     '</tool_call>', "annual_rate must be of type number"),
    ('<tool_call>{"name": "monthly_payment", "arguments": {"loan_amount": "$1,000", "annual_rate": 6, "years": true}}'
     '</tool_call>', "years must be of type integer"),
    ('<tool_call>{"name": "debt_to_income", "arguments": {"monthly_debts": "$1"}}</tool_call>', "missing ['monthly_income']"),
    ('<tool_call>{"name": "debt_to_income", "arguments": {"monthly_debts": "$1", "monthly_income": "$2", "x": 1}}'
     '</tool_call>', "unknown ['x']"),
    ('<tool_call>{"name": "debt_to_income", "arguments": {"monthly_debts": "lots", "monthly_income": "$2"}}'
     '</tool_call>', "'lots' is not an amount"),
    ('<tool_call>{"name": "debt_to_income", "arguments": {"monthly_debts": "$1", "monthly_income": "$0"}}'
     '</tool_call>', "undefined"),
    ('<tool_call>["debt_to_income"]</tool_call>', "JSON object"),
])
def test_dispatch_refuses_with_a_clear_error_and_never_raises(text, error):
    out = tools.dispatch(tools.TOOLS, tools.schemas(), text)
    assert out["ok"] is False and out["result"].startswith("error: ") and error in out["result"], out


def test_dispatch_runs_only_registered_functions():
    calls = []
    registry = {"debt_to_income": lambda **kw: calls.append(kw) or "1%"}
    ok = tools.dispatch(registry, tools.schemas(), tools.call_text("debt_to_income", {"monthly_debts": "$1",
                                                                                        "monthly_income": "$9"}))
    assert ok == {"name": "debt_to_income", "arguments": {"monthly_debts": "$1", "monthly_income": "$9"},
                  "result": "1%", "ok": True}
    # in the schemas but not registered: refused, nothing runs
    out = tools.dispatch(registry, tools.schemas(), tools.call_text("monthly_payment", {"loan_amount": "$1",
                                                                                         "annual_rate": 1, "years": 1}))
    assert not out["ok"] and "no tool named" in out["result"] and len(calls) == 1
    assert tools.dispatch(registry, tools.schemas(), "The ratio is 5%.") is None


def test_conversation_labels_mask_everything_but_the_assistant_turns(tok):
    row = tools.dti_rows([data.DTI_EXAMPLE])[0]
    f = tools.conversation_labels(tok, tools.tool_conversation(row), tools.schemas())
    learned = [t for t in f["labels"] if t != sft.IGNORE_INDEX]
    text = tok.decode(learned)
    assert "<tool_call>" in text and "= 30%." in text and text.count("<|end|>") == 2
    assert "<tool_response>" not in text and "Monthly income" not in text and "Tools" not in text
    # equal to trl's assistant-only labels built from the template's {% generation %} markers
    conv = tools.tool_conversation(row)
    theirs = tok.apply_chat_template(conv, tools=tools.schemas(), tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
    assert theirs["input_ids"] == f["input_ids"]
    assert [t if m else -100 for t, m in zip(theirs["input_ids"], theirs["assistant_masks"])] == f["labels"]


def test_run_feeds_results_back_and_caps_the_calls(tok, monkeypatch):
    import labkit.evaluate as ev

    row = tools.dti_rows([data.DTI_EXAMPLE])[0]
    call = tools.call_text(*row["call"])
    script = {"good": [call, "The debt-to-income ratio is $1,500 / $5,000 = 30%."],
              "loop": [call, call, call, call]}
    seen = []

    def fake_answer(model, tok_, prompts, max_new_tokens=48, **kw):
        seen.extend(prompts)
        return [model.pop(0) for _ in prompts]

    monkeypatch.setattr(ev, "answer", fake_answer)
    good = tools.run(script["good"], tok, [row])[0]
    assert good["answer"].endswith("30%.") and good["calls"][0]["result"] == "30%"
    assert "<tool_response>30%</tool_response>" in seen[-1]
    loop = tools.run(script["loop"], tok, [row], max_calls=2)[0]
    assert loop["answer"] is None and len(loop["calls"]) == 2 and script["loop"] == [call, call]
    lied = tools.run([call, "The debt-to-income ratio is $1,500 / $5,000 = 99%."], tok, [row],
                     lie={"debt_to_income": "99%"})[0]
    assert lied["calls"][0]["result"] == "99%" and "<tool_response>99%</tool_response>" in seen[-1]
    assert tools.value_accuracy([good, loop], [row, row]) == [True, False]


def test_fallback_for_templates_without_tools(tok):
    plain = tools.plain_messages(tools.tool_conversation(tools.dti_rows([data.DTI_EXAMPLE])[0]), tools.schemas())
    assert [m["role"] for m in plain] == ["user", "assistant", "user", "assistant"]
    assert plain[0]["content"].startswith("Tools:\n{") and "debt_to_income" in plain[0]["content"]
    assert plain[1]["content"].startswith("<tool_call>") and plain[2]["content"] == "<tool_response>30%</tool_response>"
    assert all(isinstance(m["content"], str) for m in plain)
    old = tok.chat_template
    try:
        tok.chat_template = OLD_TEMPLATE          # a template that silently ignores tools
        assert not tools.supports_tools(tok)
        text = tools.render(tok, tools.tool_conversation(tools.dti_rows([data.DTI_EXAMPLE])[0]), tools.schemas())
        assert "<|user|>\n<tool_response>30%</tool_response>" in text and "debt_to_income" in text
    finally:
        tok.chat_template = old


def test_no_tools_offered_is_the_plain_prompt(tok, monkeypatch):
    import labkit.evaluate as ev

    seen = []
    monkeypatch.setattr(ev, "answer", lambda m, t, prompts, max_new_tokens=48, **kw: seen.extend(prompts) or
                        ["The debt-to-income ratio is $1,500 / $5,000 = 30%."] * len(prompts))
    row = tools.dti_rows([data.DTI_EXAMPLE])[0]
    out = tools.run(None, tok, [row], tools={})[0]
    assert seen == [data.to_prompt_completion(row, tok)["prompt"]] and out["calls"] == []
    # a call with no tools registered is refused, not run
    assert not tools.dispatch({}, [], tools.call_text(*row["call"]))["ok"]


def test_payment_rows_are_deterministic_and_respect_their_ranges():
    a, b = tools.payment_rows(20, seed=3), tools.payment_rows(20, seed=3)
    assert a == b and a != tools.payment_rows(20, seed=4)
    far = tools.payment_rows(30, seed=1, amounts=(600, 990), terms=(5, 40))
    assert all(600_000 <= tools.amount(r["call"][1]["loan_amount"]) <= 990_000 for r in far)
    assert {r["call"][1]["years"] for r in far} <= {5, 40}


@pytest.mark.slow
def test_shipped_tool_adapter_scores_what_its_report_says():
    """The shipped adapter, measured live through the tool loop on the script's held-out rows, gives the
    figures in its scores.json (greedy decoding: at most one answer may flip with the thread count)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tool_adapter", ROOT / "scripts" / "train_tool_adapter.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model, tok_, _ = tools.start_model("bundled")
    tuned, report = tools.load_shipped(model)
    live = script.scores(tuned, tok_, script.eval_rows(report["n_eval_per_task"]))
    for task, b in report["by_task"].items():
        assert abs(live[task]["right"] - b["right"]) <= 1, (task, live[task], b)
        assert abs(live[task]["valid"] - b["valid"]) <= 1
    assert report["by_task"]["dti"]["value"] > 0.9   # the lesson's claim: above 90% with the tool
    control = report["control"]["by_task"]            # the same steps of plain SFT, no tool (--control-only)
    assert all(control[t]["right"] < report["by_task"][t]["right"] for t in control)
