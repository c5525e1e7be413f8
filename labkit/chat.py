"""Chat templates: the exact text a chat model is trained on and asked with, taken from its tokenizer.

Every model family writes a conversation its own way: the bundled model as
``<|user|>\\n...<|end|>\\n<|assistant|> answer<|end|>``, SmolLM2 and Qwen2.5 as ChatML with a default
system turn (``<|im_start|>assistant\\n answer<|im_end|>``), Gemma with ``<start_of_turn>model`` and
a BOS token written by the template itself. So nothing in the course writes those markers by hand;
this module asks the tokenizer's own chat template:

- the prompt is the conversation without the answer, rendered with ``add_generation_prompt=True``
  (it ends where the model starts to write);
- the completion is what the template renders after that prompt for the whole conversation: the
  answer and the template's turn end (``<|im_end|>``, ``<|end|>``, ``<end_of_turn>``). Whitespace the
  template adds after the turn end (a newline before the next turn) is not part of the answer and is
  dropped: the model stops at the turn end and never writes it;
- the tokens that stop generation are the turn end plus every EOS id of the tokenizer and of the
  model's generation config;
- BOS is added once: by the template when it writes one, else by the tokenizer when it adds one.

    pair = chat.prompt_completion(tok, "What is 2 + 2?", "4")
    pair["prompt"] + pair["completion"]        # == the template's rendering of both turns
    chat.stop_token_ids(tok, model)            # e.g. [<|im_end|>, <|endoftext|>]
"""

from __future__ import annotations


class TemplateError(ValueError):
    """A chat template that cannot be used the way the course needs, with the model named."""


def model_name(tok) -> str:
    """The name of the model a tokenizer belongs to, for error messages (its path, or its class)."""
    return getattr(tok, "name_or_path", "") or type(tok).__name__


def messages(user: str, answer: str | None = None, system: str | None = None) -> list[dict]:
    """[{"role", "content"}] for one exchange: an optional system turn, the user turn, the answer."""
    conv = [{"role": "system", "content": system}] if system is not None else []
    conv.append({"role": "user", "content": user})
    if answer is not None:
        conv.append({"role": "assistant", "content": answer})
    return conv


def render_chat(tok, conv: list[dict], add_generation_prompt: bool) -> str:
    if getattr(tok, "chat_template", None) is None:
        raise TemplateError(f"the tokenizer of {model_name(tok)!r} has no chat template; give it one "
                            "(tok.chat_template = '...') or use a chat/instruct model.")
    try:
        return tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja's TemplateError, or raise_exception() inside the template
        roles = [m["role"] for m in conv]
        raise TemplateError(f"the chat template of {model_name(tok)!r} refused a conversation with roles {roles}: "
                            f"{exc}") from None


def render_prompt(tok, user: str | list[dict], system: str | None = None) -> str:
    """The prompt the model answers: USER (a message, or a list of messages) rendered with the chat
    template and its generation prompt, e.g. ``...<|im_start|>assistant\\n``."""
    conv = messages(user, system=system) if isinstance(user, str) else list(user)
    return render_chat(tok, conv, add_generation_prompt=True)


def split(tok, conv: list[dict]) -> dict:
    """CONV (ending with the assistant's answer) as {"prompt", "completion"} strings.

    prompt: CONV without its last turn, rendered with the generation prompt; completion: what the
    template renders after that prompt for the whole CONV, ending at the template's turn end (the
    whitespace the template writes after it is dropped). Raises TemplateError, naming the model, when
    the prompt is not a prefix of the whole rendering (the template renders a turn differently when
    it is the last) or when the answer does not appear in the completion.
    """
    if not conv or conv[-1].get("role") != "assistant":
        raise ValueError("the conversation must end with the assistant's answer (role 'assistant').")
    answer = conv[-1]["content"]
    if not isinstance(answer, str):
        raise ValueError(f"the assistant's answer must be a string; got {answer!r}.")
    prompt = render_chat(tok, conv[:-1], add_generation_prompt=True)
    full = render_chat(tok, conv, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise TemplateError(
            f"the chat template of {model_name(tok)!r} renders the conversation differently with and without "
            f"the answer, so the prompt is not a prefix of the whole: prompt ends {prompt[-60:]!r}, the whole "
            f"conversation has {full[max(0, len(prompt) - 60):len(prompt) + 20]!r} there. Split it by hand or "
            "use another template.")
    completion, text = full[len(prompt):], answer.strip()
    end = completion.rfind(text) if text else 0  # an empty answer: the template's text alone (it teaches nothing)
    if end < 0:
        raise TemplateError(f"the chat template of {model_name(tok)!r} does not write the answer verbatim "
                            f"(looked for {text!r} in {completion!r}).")
    end += len(text)
    if completion[end:].strip():  # keep the turn end, drop the whitespace the template writes after it
        completion = completion[:end] + completion[end:].rstrip()
    return {"prompt": prompt, "completion": completion}


def prompt_completion(tok, user: str, answer: str, system: str | None = None) -> dict:
    """One exchange as {"prompt", "completion"} from the model's own template (see ``split``)."""
    return split(tok, messages(user, answer, system))


def _probe(tok) -> tuple[str, str]:
    """(before, after): what the template writes around an answer, e.g. (" ", "<|end|>")."""
    marker = "ANSWER_7Q"
    c = split(tok, messages("Hello", marker))["completion"]
    i = c.index(marker)
    return c[:i], c[i + len(marker):]


def completion(tok, answer: str) -> str:
    """The completion string the template writes for ANSWER: what the model produces when it gives ANSWER
    and stops, e.g. " 4<|end|>" for the bundled model or "4<|im_end|>" for ChatML (see ``split``)."""
    before, after = _probe(tok)
    return before + answer.strip() + after


def turn_end(tok) -> str:
    """The text the template writes after an answer, e.g. "<|im_end|>"; "" when it writes none."""
    return _probe(tok)[1].strip()


def answer_prefix(tok) -> str:
    """The text the template writes between the generation prompt and the answer (the bundled model's
    leading space, a thinking block, or "")."""
    return _probe(tok)[0]


def facts(tok, model=None) -> dict:
    """What the tokenizer and its chat template say about documents and turns, for a lesson to print.

    {"bos": the BOS token text or None, "tokenizer_adds_bos": does tok("x") put it in front,
     "document_start": the tokens a plain document starts with (``document_start``, as text),
     "chat_template": does the tokenizer have one, "template_writes_bos": does a rendered prompt start
     with BOS, "generation_prompt": the text a one-turn prompt ends with after the user's message,
     "answer_prefix", "turn_end" (None without a template), "eos", "pad",
     "stop_tokens": the texts of ``stop_token_ids(tok, model)``}.
    """
    bos = getattr(tok, "bos_token", None)
    out = {"bos": bos, "tokenizer_adds_bos": tokenizer_adds_bos(tok),
           "document_start": tok.convert_ids_to_tokens(document_start(tok)),
           "chat_template": getattr(tok, "chat_template", None) is not None, "template_writes_bos": False,
           "generation_prompt": None, "answer_prefix": None, "turn_end": None}
    if out["chat_template"]:
        prompt = render_prompt(tok, "USER_7Q")
        out.update(template_writes_bos=bool(bos) and prompt.startswith(bos),
                   generation_prompt=prompt[prompt.rindex("USER_7Q") + len("USER_7Q"):],
                   answer_prefix=answer_prefix(tok), turn_end=turn_end(tok))
    out.update(eos=tok.eos_token, pad=tok.pad_token,
               stop_tokens=tok.convert_ids_to_tokens(stop_token_ids(tok, model)))
    return out


def _as_list(ids) -> list:
    if ids is None:
        return []
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def stop_token_ids(tok, model=None) -> list[int]:
    """Token ids that end an answer: the template's turn end (when it is one token), the tokenizer's
    EOS, and every EOS id of MODEL's generation config. In that order, without repeats."""
    ids = []
    end = turn_end(tok) if getattr(tok, "chat_template", None) else ""
    if end:
        enc = tok(end, add_special_tokens=False)["input_ids"]
        if len(enc) == 1:
            ids.append(enc[0])
    ids.append(tok.eos_token_id)
    gen = getattr(model, "generation_config", None)
    ids += _as_list(getattr(gen, "eos_token_id", None))
    out = []
    for i in ids:
        if isinstance(i, int) and i >= 0 and i not in out:
            out.append(i)
    if not out:
        raise TemplateError(f"{model_name(tok)!r} has no EOS token and its template no turn-end token: "
                            "generation would never stop. Set tok.eos_token.")
    return out


def stop_strings(tok) -> list[str]:
    """The texts of the stop tokens and the turn end: where a decoded answer is cut."""
    out = [turn_end(tok)] if getattr(tok, "chat_template", None) else []
    out += [tok.eos_token] if tok.eos_token else []
    return [s for s in dict.fromkeys(out) if s]


def adds_bos(tok, text: str) -> bool:
    """Should encoding TEXT add the tokenizer's special tokens? Not when TEXT already starts with BOS
    (templates such as Gemma's and Llama 3's write it): encoding it again would give two."""
    bos = getattr(tok, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode(tok, text: str) -> list[int]:
    """TEXT's token ids with BOS exactly once when the tokenizer uses one (see ``adds_bos``)."""
    return tok(text, add_special_tokens=adds_bos(tok, text))["input_ids"]


def clean(tok, text: str) -> str:
    """A decoded answer cut at the first stop string (turn end, EOS) and stripped of outer spaces."""
    for s in stop_strings(tok):
        text = text.split(s)[0]
    return text.strip()


def encode_prompts(tok, prompts: list[str], device="cpu") -> dict:
    """PROMPTS (chat-formatted) as one left-padded batch {"input_ids", "attention_mask"} (batch, seq) on DEVICE.

    Left padding puts every prompt's last token in the last column, where generate() continues it; BOS is
    added only when the template did not already write it (adds_bos). The tokenizer's padding side is restored.
    """
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(list(prompts), return_tensors="pt", padding=True,
                  add_special_tokens=all(adds_bos(tok, p) for p in prompts))
    finally:
        tok.padding_side = side
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def tokenizer_adds_bos(tok) -> bool:
    """Does the tokenizer itself put BOS in front of encoded text (Llama 2, Gemma), or not (GPT-2, Qwen)?"""
    bos = getattr(tok, "bos_token_id", None)
    return bos is not None and tok("x")["input_ids"][:1] == [bos]


def for_trl(tok, pair: dict) -> dict:
    """A {"prompt", "completion"} PAIR as trl should get it: trl encodes string prompts with the
    tokenizer's defaults, which adds BOS again when the template already wrote one (Gemma's); so the
    template's BOS text is taken off the prompt and the tokenizer adds it back: one BOS either way."""
    bos = getattr(tok, "bos_token", None)
    if bos and pair["prompt"].startswith(bos) and tokenizer_adds_bos(tok):
        return {**pair, "prompt": pair["prompt"][len(bos):]}
    return pair


def document_start(tok) -> list[int]:
    """The ids a plain document starts with: [BOS] when the tokenizer has one (the bundled model's is
    <|endoftext|>, as GPT-2's), else none (Qwen's and SmolLM's ChatML tokenizers have no BOS)."""
    bos = getattr(tok, "bos_token_id", None)
    return [bos] if bos is not None else []


def describe(tok, user: str = "Hello", answer: str = "Hi") -> dict:
    """What TOK's chat template does around one exchange, for a lesson to print (the values are examples).

    Returns {"generation_prompt": the text add_generation_prompt=True appends ("<|assistant|>",
    "<|im_start|>assistant\\n"), "answer_prefix": what precedes the answer in the completion (a space,
    or ""), "turn_end": what follows it ("<|end|>", "<|im_end|>", "<end_of_turn>"), "bos_token" (None
    when the tokenizer has none), "template_writes_bos": the rendered prompt starts with it (Gemma,
    Llama 3), "tokenizer_adds_bos": tok(text) puts it in front (Llama 2, Gemma), "double_bos": both, so
    a naive tok(prompt) starts with BOS twice (``encode`` adds none to a text that starts with BOS),
    "for_trl_strips_bos": ``for_trl`` takes the template's BOS off the prompt so that trl's own
    tokenizer call adds it back once, "turn_end_is_eos": the turn end is the tokenizer's EOS (GPT-2-style
    templates; trl and labkit append EOS only to a completion that does not end with it), "prompt",
    "completion": the exchange split by ``prompt_completion``}.
    """
    pair = prompt_completion(tok, user, answer)
    conv = messages(user)
    without, with_prompt = render_chat(tok, conv, False), render_chat(tok, conv, True)
    generation = with_prompt[len(without):] if with_prompt.startswith(without) else with_prompt
    before, after = _probe(tok)
    bos, bos_id = getattr(tok, "bos_token", None), getattr(tok, "bos_token_id", None)
    writes = bool(bos) and pair["prompt"].startswith(bos)
    adds = tokenizer_adds_bos(tok)
    naive = tok(pair["prompt"])["input_ids"]
    return {"generation_prompt": generation, "answer_prefix": before, "turn_end": after.strip(),
            "bos_token": bos if bos_id is not None else None, "template_writes_bos": writes,
            "tokenizer_adds_bos": adds, "double_bos": bos_id is not None and naive[:2] == [bos_id] * 2,
            "for_trl_strips_bos": for_trl(tok, pair)["prompt"] != pair["prompt"],
            "turn_end_is_eos": bool(tok.eos_token) and after.strip() == tok.eos_token,
            "prompt": pair["prompt"], "completion": pair["completion"]}
