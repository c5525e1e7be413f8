"""Tool use (function calling): a Python function becomes a schema, the model writes a call, labkit runs it.

The convention is the Hub's (Qwen2.5, Hermes, SmolLM3): tools are passed as ``tools=`` to
``apply_chat_template`` (JSON schemas from ``transformers.utils.get_json_schema``); an assistant message
that calls a tool carries ``tool_calls=[{"type": "function", "function": {"name", "arguments"}}]`` and the
template writes it as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; the result comes back as
a message with ``role: "tool"``, written as ``<tool_response>...</tool_response>``. A template without tool
support (GPT-2's, Gemma's) gets the same tags written into plain user and assistant turns (``plain_messages``).

    schemas = [get_json_schema(f) for f in TOOLS.values()]
    text = render(tok, conv, schemas)              # the template's own rendering (or the plain fallback)
    result = dispatch(TOOLS, schemas, reply_text)  # parse, check, run: never raises, an error is a message
"""

from __future__ import annotations

import json
import random
import re

from . import adapters, chat, data, evaluate, models, sft
from .corpus import money
from .models import ASSETS

CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}


class ToolCallError(ValueError):
    """A call the dispatcher refuses: its message goes back to the model as the tool's result."""


# ----------------------------------------------------------------------------- the tools

def amount(text: str) -> int:
    """'$3,250' (or '3250') -> 3250; a ToolCallError for anything else."""
    digits = str(text).strip().removeprefix("$").replace(",", "")
    if not digits.isdigit():
        raise ToolCallError(f"{text!r} is not an amount like '$3,250'")
    return int(digits)


def debt_to_income(monthly_debts: str, monthly_income: str) -> str:
    """Debts over income, in whole percent.

    Args:
        monthly_debts: the monthly debts as written, e.g. "$750"
        monthly_income: the monthly income as written, e.g. "$3,250"
    """
    income = amount(monthly_income)
    if income == 0:
        raise ToolCallError("monthly_income is $0: the ratio is undefined")
    return f"{round(100 * amount(monthly_debts) / income)}%"


def monthly_payment(loan_amount: str, annual_rate: float, years: int) -> str:
    """The monthly payment of a loan, in whole dollars.

    Args:
        loan_amount: the amount borrowed as written, e.g. "$175,000"
        annual_rate: the yearly interest rate in percent, e.g. 6.5
        years: the term in years, e.g. 30
    """
    principal, r, n = amount(loan_amount), annual_rate / 1200, 12 * years
    if n <= 0:
        raise ToolCallError("years must be positive")
    pay = principal / n if r == 0 else principal * r / (1 - (1 + r) ** -n)
    return money(round(pay))


TOOLS = {f.__name__: f for f in (debt_to_income, monthly_payment)}


def schemas(tools: dict | None = None) -> list[dict]:
    """The JSON schema of each function (transformers' get_json_schema: type hints + docstring)."""
    from transformers.utils import get_json_schema

    return [get_json_schema(f) for f in (TOOLS if tools is None else tools).values()]


# ----------------------------------------------------------------------------- parse, check, run

def parse_call(text: str) -> tuple[str, dict] | None:
    """The (name, arguments) of the first <tool_call>{...}</tool_call> in TEXT; None when TEXT has no call
    (a final answer). Raises ToolCallError for a call that is not a JSON object with a string "name" and an
    object "arguments"."""
    if "<tool_call>" not in text:
        return None
    m = CALL.search(text)
    if m is None:
        raise ToolCallError("the call has no closing </tool_call>")
    try:
        call = json.loads(m.group(1))
    except json.JSONDecodeError as exc:
        raise ToolCallError(f"the call is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolCallError('the call must be a JSON object with a "name" and "arguments"')
    args = call.get("arguments", {})
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ToolCallError("the arguments string is not valid JSON") from None
    if not isinstance(args, dict):
        raise ToolCallError("arguments must be a JSON object")
    return call["name"], args


def check_arguments(schema: dict, args: dict) -> None:
    """Refuse ARGS that do not fit SCHEMA (get_json_schema's): missing, unknown or wrongly typed arguments."""
    params = schema["function"]["parameters"]
    props, name = params.get("properties", {}), schema["function"]["name"]
    missing = [p for p in params.get("required", []) if p not in args]
    unknown = [a for a in args if a not in props]
    if missing or unknown:
        raise ToolCallError(f"{name} takes {sorted(props)}; missing {missing}, unknown {unknown}")
    for a, v in args.items():
        want = props[a].get("type")
        if want in TYPES and (not isinstance(v, TYPES[want]) or (isinstance(v, bool) and want != "boolean")):
            raise ToolCallError(f"{name}: {a} must be of type {want}, got {json.dumps(v)}")


def dispatch(tools: dict, tool_schemas: list[dict], text: str) -> dict | None:
    """Run the call in TEXT: None when TEXT is a final answer, else {"name", "arguments", "result", "ok"}.

    Only functions registered in TOOLS run (no eval, no import); the arguments are checked against the
    schema first; a malformed or unknown call, bad arguments or a tool that raises give ok=False and an
    "error: ..." result that goes back to the model. Never raises."""
    try:
        call = parse_call(text)
        if call is None:
            return None
        name, args = call
        known = {s["function"]["name"]: s for s in tool_schemas}
        if name not in tools or name not in known:
            raise ToolCallError(f"no tool named {name!r}; the tools are {sorted(known)}")
        check_arguments(known[name], args)
        return {"name": name, "arguments": args, "result": str(tools[name](**args)), "ok": True}
    except Exception as exc:  # the model's mistake, or the tool's, becomes the tool turn
        name, args = (call if isinstance(locals().get("call"), tuple) else (None, None))
        return {"name": name, "arguments": args, "result": f"error: {exc}", "ok": False}


# ----------------------------------------------------------------------------- templates

def call_message(name: str, arguments: dict) -> dict:
    """An assistant message that calls NAME(ARGUMENTS), as Hub templates expect it."""
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def call_text(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


_SUPPORTS: dict[str, bool] = {}


def supports_tools(tok) -> bool:
    """Does TOK's chat template render tools, tool calls and tool results (all three, without raising)?"""
    key = str(getattr(tok, "chat_template", None))
    if key not in _SUPPORTS:
        _SUPPORTS[key] = _probe_tools(tok)
    return _SUPPORTS[key]


def _probe_tools(tok) -> bool:
    probe = [{"role": "user", "content": "Q"}, call_message("call_7Q", {"x": 1}),
             {"role": "tool", "name": "call_7Q", "content": "result_7Q"}]
    tool = {"type": "function", "function": {"name": "tool_7Q", "description": "d",
                                             "parameters": {"type": "object", "properties": {}}}}
    try:
        text = tok.apply_chat_template(probe, tools=[tool], tokenize=False)
    except Exception:
        return False
    return all(s in text for s in ("tool_7Q", "call_7Q", "result_7Q"))


def plain_messages(conv: list[dict], tool_schemas: list[dict] | None) -> list[dict]:
    """CONV for a template without tool support: the tools listed in the first user turn, calls written
    as <tool_call> text in the assistant's turn, results as <tool_response> user turns."""
    out, listed = [], not tool_schemas
    for m in conv:
        if m["role"] == "user" and not listed:
            names = "\n".join(json.dumps(s["function"]) for s in tool_schemas)
            m, listed = {**m, "content": f"Tools:\n{names}\n\n{m['content']}"}, True
        if m["role"] == "assistant" and m.get("tool_calls"):
            f = m["tool_calls"][0].get("function", m["tool_calls"][0])
            m = {"role": "assistant", "content": ((m.get("content") or "") + " " + call_text(f["name"], f["arguments"])).strip()}
        elif m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>{m['content']}</tool_response>"}
        out.append(m)
    return out


def render(tok, conv: list[dict], tool_schemas: list[dict] | None, add_generation_prompt: bool = False) -> str:
    """CONV with TOOL_SCHEMAS as TOK's chat template writes it, or through ``plain_messages`` when the
    template has no tool support."""
    if supports_tools(tok):
        return tok.apply_chat_template(conv, tools=tool_schemas, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)
    return chat.render_prompt(tok, plain_messages(conv, tool_schemas)) if add_generation_prompt else \
        chat.render_chat(tok, plain_messages(conv, tool_schemas), False)


# ----------------------------------------------------------------------------- multi-turn labels

def conversation_labels(tok, conv: list[dict], tool_schemas, max_length: int = 512) -> dict:
    """{"input_ids", "labels"} of a whole conversation: labels are -100 everywhere except the tokens
    of each assistant turn (from its generation prompt to its turn end); tool results, the user and the
    tool list are context, never learned."""
    full = render(tok, conv, tool_schemas)
    spans = []
    for i, m in enumerate(conv):
        if m["role"] == "assistant":
            start = len(render(tok, conv[:i], tool_schemas, add_generation_prompt=True))
            end = len(render(tok, conv[:i + 1], tool_schemas).rstrip())
            _check_prefix(tok, full, render(tok, conv[:i], tool_schemas, add_generation_prompt=True))
            spans.append((start, end))
    enc = tok(full, add_special_tokens=chat.adds_bos(tok, full), return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [t if any(s <= a < e for s, e in spans) and b > a else -100 for t, (a, b) in zip(ids, enc["offset_mapping"])]
    if len(ids) > max_length:
        raise ValueError(f"a tool conversation has {len(ids)} tokens, more than max_length={max_length}.")
    return {"input_ids": ids, "labels": labels}


def _check_prefix(tok, full: str, prompt: str) -> None:
    if not full.startswith(prompt):
        raise chat.TemplateError(f"the chat template of {chat.model_name(tok)!r} renders a tool conversation "
                                 "differently once it goes on, so its turns cannot be masked one by one.")


# ----------------------------------------------------------------------------- data

PAYMENT_INSTRUCTION = "What is the monthly payment on this loan?"


def payment_rows(n: int, seed: int, amounts=(50, 500), rates=(2.0, 9.0), terms=(10, 15, 20, 25, 30)) -> list[dict]:
    """N loan-payment questions in the course's instruction format; AMOUNTS in thousands of dollars,
    RATES in percent (quarter steps). The answer comes from monthly_payment."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        loan = money(1000 * rng.randint(*amounts))
        rate, years = rng.randint(int(4 * rates[0]), int(4 * rates[1])) / 4, rng.choice(terms)
        out.append({"task": "payment", "instruction": PAYMENT_INSTRUCTION,
                    "input": f"Loan amount: {loan}\nInterest rate: {rate:g}%\nTerm: {years} years",
                    "output": f"The monthly payment is {monthly_payment(loan, rate, years)}.",
                    "call": ("monthly_payment", {"loan_amount": loan, "annual_rate": rate, "years": years})})
    return out


def dti_rows(rows: list[dict]) -> list[dict]:
    """The course's DTI rows with the call that answers them."""
    out = []
    for r in rows:
        if r["task"] == "dti":
            inc, debts = re.search(r"income: (\$[\d,]+)\nMonthly debts: (\$[\d,]+)", r["input"]).groups()
            out.append({**r, "call": ("debt_to_income", {"monthly_debts": debts, "monthly_income": inc})})
    return out


def tool_conversation(row: dict, result: str | None = None) -> list[dict]:
    """ROW as user, assistant call, tool result (RESULT, or what the tool returns), final answer."""
    name, args = row["call"]
    result = TOOLS[name](**args) if result is None else result
    return data.to_messages(row)[:1] + [call_message(name, args), {"role": "tool", "name": name, "content": result},
                                        {"role": "assistant", "content": row["output"]}]


def final_value(text: str | None) -> str | None:
    """The value an answer ends on: "... = 23%." -> "23%", "... is $1,106." -> "$1,106"."""
    m = re.search(r"(\$[\d,]+|\d+%)\.?\s*$", (text or "").strip())
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- the loop

def run(model, tok, rows: list[dict], tools: dict | None = None, max_calls: int = 2, max_new_tokens: int = 128,
        lie: dict | None = None) -> list[dict]:
    """Answer each ROW with tools, all rows in step: generate, run any call, feed its result back, generate
    again, until a final answer or MAX_CALLS calls. LIE {tool name: result} replaces what a tool returns.
    Per row: {"answer" (None if the cap was hit), "calls": dispatch() records, "conversation"}."""

    tools = TOOLS if tools is None else tools   # {}: no tools offered (the plain prompt)
    sch = schemas(tools)
    convs = [data.to_messages(r)[:1] for r in rows]
    out = [{"answer": None, "calls": [], "conversation": c} for c in convs]
    todo = list(range(len(rows)))
    for _ in range(max_calls + 1):
        texts = evaluate.answer(model, tok, [render(tok, convs[i], sch, True) for i in todo], max_new_tokens)
        still = []
        for i, text in zip(todo, texts):
            call = dispatch(tools, sch, text)
            if call is None:
                convs[i].append({"role": "assistant", "content": text})
                out[i]["answer"] = text
                continue
            if call["ok"] and lie and call["name"] in lie:
                call["result"] = lie[call["name"]]
            out[i]["calls"].append(call)
            msg = call_message(call["name"], call["arguments"]) if call["ok"] else {"role": "assistant", "content": text}
            convs[i] += [msg, {"role": "tool", "name": call["name"] or "unknown", "content": call["result"]}]
            if len(out[i]["calls"]) < max_calls:
                still.append(i)
        todo = still
        if not todo:
            break
    return out


def value_accuracy(results: list[dict], rows: list[dict]) -> list[bool]:
    """Per row: does the final answer end on the right value (final_value)?"""
    return [final_value(r["answer"]) is not None and final_value(r["answer"]) == final_value(row["output"])
            for r, row in zip(results, rows)]


# ----------------------------------------------------------------------------- models

ADAPTER = "tool_lora"   # the shipped adapter: scripts/train_tool_adapter.py


def start_model(name, device: str = "cpu"):
    """(model, tok, line): the model the lesson fine-tunes. The bundled model starts from lesson 06's shipped
    SFT adapter, merged (it answers in the course's formats); any other MODEL starts as it is."""

    model, tok = models.load_base(name, device=device)
    if not models.is_bundled(name):
        return model, tok, f"start: {name} as it is (lesson 06's shipped SFT adapter fits the bundled model only)"
    model = sft.load_shipped_adapter(model)[0].merge_and_unload().eval()
    return model, tok, "start: the bundled model with lesson 06's shipped SFT adapter, merged"


def load_shipped(model):
    """(peft model, report): START_MODEL's bundled model with the shipped tool adapter, and its scores.json."""

    path = ASSETS / "adapters" / ADAPTER
    report = json.loads((path / "scores.json").read_text()) if (path / "scores.json").is_file() else {}
    return adapters.load(model, path).eval(), report


def context_length(model) -> int:
    """The longest sequence MODEL takes (Llama-style max_position_embeddings, GPT-2's n_positions)."""
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512))
