"""Lesson 12 (tool use): a dispatcher that never runs what is not registered and never crashes, the labels of a
multi-turn tool conversation, and three interview questions on function calling."""

from __future__ import annotations

import json

from labkit import tools
from labkit.check import Case, exercise, question

LESSON = "12"
IGNORE = -100


def _call(name, args) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def safe_call(tool_registry, text):
    """The reference: the tool turn's text for TEXT (None when TEXT calls nothing)."""
    out = tools.dispatch(tool_registry, tools.schemas(tool_registry), text)
    return None if out is None else out["result"]


def _compare(got, exp, case=None):
    if exp is None:
        return None if got is None else f"returned {got!r}; this text calls no tool, so return None"
    if exp.startswith("error"):
        if isinstance(got, str) and got.startswith("error"):
            return None
        return f"returned {got!r}; a refused call must give a string starting with 'error' (and never raise)"
    return None if got == exp else f"returned {got!r}, not the tool's result"


def _dti(debts, income):
    return _call("debt_to_income", {"monthly_debts": debts, "monthly_income": income})


def _public():
    t = dict(tools.TOOLS)
    return [Case({"tool_registry": t, "text": _dti("$750", "$3,250")}, "a good call"),
            Case({"tool_registry": t, "text": "The debt-to-income ratio is $750 / $3,250 = 23%."}, "a final answer"),
            Case({"tool_registry": t, "text": '<tool_call>{"name": "debt_to_income", "arguments": {</tool_call>'},
                 "malformed JSON", hint="json.loads raises json.JSONDecodeError: catch it"),
            Case({"tool_registry": t, "text": _call("os.system", {"command": "rm -rf /"})}, "an unknown function",
                 hint="look the name up in tool_registry; never eval, getattr or import it"),
            Case({"tool_registry": t, "text": _dti("$750", "$0")}, "a call whose tool raises",
                 hint="the tool's own exception must become an 'error: ...' string too")]


def _hidden(rng):
    t = dict(tools.TOOLS)
    cases = []
    for _ in range(4):
        debts, income = f"${rng.randint(1, 40) * 25:,}", f"${rng.randint(40, 200) * 50:,}"
        cases.append(Case({"tool_registry": t, "text": "Sure. " + _dti(debts, income)}))
    cases.append(Case({"tool_registry": t, "text": _call("monthly_payment", {"loan_amount": "$120,000",
                                                                             "annual_rate": rng.choice([3, 5.5, 7]),
                                                                             "years": rng.choice([15, 30])})}))
    cases.append(Case({"tool_registry": t, "text": _call("debt_to_income", {"monthly_debts": "$5"})},
                      "a missing argument"))
    cases.append(Case({"tool_registry": {"debt_to_income": tools.debt_to_income},
                       "text": _call("monthly_payment", {"loan_amount": "$1,000", "annual_rate": 5, "years": 1})},
                      "a real tool that is not registered here"))
    return cases


exercise(id="safe_call", lesson=LESSON, title="A dispatcher that refuses what it should, and never crashes",
         signature="safe_call(tool_registry, text)",
         reference=safe_call, public=_public, hidden=_hidden, compare=_compare,
         hint="find <tool_call>...</tool_call>, json.loads it, look the name up in tool_registry, call "
              "tool_registry[name](**arguments); any failure returns 'error: ' + a reason; no call returns None")


def _labels(input_ids, roles):
    return [t if r == "assistant" else IGNORE for t, r in zip(input_ids, roles)]


def _conv_case(rng, n_turns):
    ids, roles = [], []
    for role in ["system", "user"] + ["assistant", "tool"] * n_turns + ["assistant"]:
        for _ in range(rng.randint(1, 6)):
            ids.append(rng.randrange(2000))
            roles.append(role)
    return Case({"input_ids": ids, "roles": roles}, f"{n_turns} tool call(s)")


def _compare_labels(got, exp, case=None):
    if not isinstance(got, list) or len(got) != len(exp):
        return f"returned {type(got).__name__} of length {len(got) if hasattr(got, '__len__') else '?'}; " \
               f"expected a list as long as input_ids"
    for i, (g, e, r) in enumerate(zip(got, exp, case.inputs["roles"])):
        if g != e:
            return f"position {i} (a {r} token) is wrong: you gave {g}"
    return None


exercise(id="tool_labels", lesson=LESSON, title="The labels of a multi-turn tool conversation",
         signature="tool_labels(input_ids, roles)",
         reference=_labels,
         public=lambda: [Case({"input_ids": [5, 6, 7, 8, 9, 10, 11],
                               "roles": ["user", "user", "assistant", "tool", "tool", "assistant", "assistant"]},
                              "user, a call, its result, the answer")],
         hidden=lambda rng: [_conv_case(rng, rng.randint(0, 3)) for _ in range(5)],
         compare=_compare_labels,
         hint="the tool's result is context the model reads, like the user's turn: -100 there")

question(id="q12_mask_tool", lesson=LESSON, kind="choice", answer_hash="c0198c9a11517b0c173effc8",
         text="Your tool-calling SFT data holds, per example, the user's question, the assistant's call, the tool's "
              "result and the assistant's final answer. Why do the tool result's tokens get the label -100?",
         choices=("the tool writes them at inference; learning to predict them teaches the model to invent results",
                  "they are only a few tokens long, so a loss on them would change the gradient by almost nothing "
                  "and only cost compute",
                  "trl refuses to train on conversations in which a tool turn carries labels, so they must be -100"),
         feedback={"b": "length is not the reason: a loss on them teaches the model to write tool results itself, "
                        "which it must never do (a DTI result learned as text is the arithmetic it cannot do)",
                   "c": "trl masks whatever the template's generation markers leave out; nothing refuses labels on a "
                        "tool turn, which is why the mask has to be right"},
         hint="who writes those tokens when the model runs?")

question(id="q12_schema", lesson=LESSON, kind="choice", answer_hash="5733962f612fdaac55e8a732",
         text="get_json_schema turns a function's type hints and docstring into a JSON schema. What does the "
              "schema do in a tool loop?",
         choices=("it constrains decoding, so a model given the schema in its prompt cannot write a call with a "
                  "wrong argument name or type",
                  "it tells the model what it may call and how; the dispatcher checks each call against it",
                  "it is sent to the tool with each call, and the tool reads its arguments and their types from it"),
         feedback={"a": "the schema is text in the prompt; a model can still write a wrong type or name, which is "
                        "why the dispatcher checks the arguments against the schema",
                   "c": "the tool gets only the arguments; the schema goes to the model (through the chat template) "
                        "and to the dispatcher's checks"},
         hint="who reads the schema: the model, the dispatcher, the tool?")

question(id="q12_tool_or_data", lesson=LESSON, kind="choice", answer_hash="1d0e5dedb7d9ec72f6f53adc",
         text="A small model copies amounts from documents well but gets percentages wrong. You can spend a week "
              "on 10x more SFT data with worked percentages, or on teaching it a calculator tool. When is the "
              "tool the better choice?",
         choices=("never: a tool call adds a second generation and its latency, so a fine-tuned model that computes "
                  "the value itself is always the better product",
                  "only when the model has too few parameters to store the arithmetic it needs, as a small model "
                  "of a few million parameters does",
                  "when a function does the skill exactly and the model only has to copy the inputs, which it can"),
         feedback={"a": "the lesson's SFT model writes the DTI format perfectly and the value almost never: more "
                        "data for a skill the model lacks is slow and never exact, a call is exact at the cost of "
                        "one more generation",
                   "b": "size is not the criterion: large models call calculators too, because a function is exact "
                        "and auditable where a model's arithmetic is a guess"},
         hint="which part of the task can a model do reliably, and which can a function do exactly?")
