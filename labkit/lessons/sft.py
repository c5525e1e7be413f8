"""The mask viewer of lesson 06: how one instruction example becomes tokens and labels under four templates
(completion only, every token, an Alpaca marker that is not in the text, a marker tokenised alone), as an
HTML table of tokens coloured by whether they are trained on, and the line saying what the marker search found."""

from __future__ import annotations

from ..data import plain_text, to_prompt_completion
from ..sft import marker_labels, plain_marker, tokenize_example
from ..train import IGNORE_INDEX


# What the viewer offers: how an instruction example becomes tokens and labels.
MASK_TEMPLATES = (
    "chat template, completion only",   # labkit / trl: prompt masked, the answer trained
    "chat template, every token",       # no masking: the prompt is trained on too
    "marker '### Response:'",           # an Alpaca-style marker searched in chat-formatted text: not there
                                        # (where a template writes it, it is found, and the viewer says so)
    "plain text, marker 'Answer:'",     # a marker that is in the text, tokenised alone it differs (plain_marker)
)


def mask_example(tok, example: dict, template: str = MASK_TEMPLATES[0], max_length: int = 256,
                 name: str = "example") -> dict:
    """One instruction EXAMPLE tokenised and labelled as TEMPLATE (one of MASK_TEMPLATES) says.

    Returns {"input_ids", "labels", ...} (lists); labels are -100 where nothing is trained.
    """

    if template not in MASK_TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {MASK_TEMPLATES}.")
    if template.startswith("plain text"):
        text = plain_text(example)
        return marker_labels(tok, text, plain_marker(tok, text), max_length, name)
    pc = to_prompt_completion(example, tok)
    if template.startswith("marker"):
        return marker_labels(tok, pc["prompt"] + pc["completion"], "### Response:", max_length, name)
    f = tokenize_example(tok, pc["prompt"], pc["completion"], max_length, name)
    if template.endswith("every token"):
        f["labels"] = list(f["input_ids"])
    f["name"] = name
    return f


def mask_rows(tok, input_ids, labels) -> list[tuple[str, bool]]:
    """(token text, trained?) for each position: trained means its label is not -100."""
    if len(input_ids) != len(labels):
        raise ValueError(f"input_ids ({len(input_ids)}) and labels ({len(labels)}) differ in length.")
    return [(tok.convert_ids_to_tokens(int(i)), int(l) != IGNORE_INDEX) for i, l in zip(input_ids, labels)]


def _show_token(piece: str) -> str:
    import html

    piece = piece.replace("\u0120", " ").replace("\u010a", "\n")  # byte-level BPE's space and newline marks
    return html.escape(piece).replace(" ", "&nbsp;").replace("\n", "&#8629;<br>")


def mask_html(tok, input_ids, labels, note: str = "") -> str:
    """HTML of every token coloured by whether it is trained on (green) or masked with -100 (grey).

    Ends with a count (and NOTE, escaped, when given); an example with no trained token gets a red
    warning line.
    """
    rows = mask_rows(tok, input_ids, labels)
    spans = []
    for piece, trained in rows:
        style = ("background:#b7e4b0;color:#000" if trained else "background:#e6e6e6;color:#777")
        spans.append(f'<span style="{style};border:1px solid #fff;font-family:monospace">{_show_token(piece)}</span>')
    n = sum(t for _, t in rows)
    summary = f"<b>{n}</b> of {len(rows)} tokens trained on (green); {len(rows) - n} masked with -100 (grey)."
    if n == 0:
        summary += (' <span style="color:#c00"><b>No token is trained on: this example teaches nothing.</b> '
                    "labkit's collator refuses it.</span>")
    if note:
        import html

        summary += f"<br>{html.escape(note)}"
    return f'<div style="line-height:1.9">{"".join(spans)}</div><p>{summary}</p>'


def mask_view(tok, example: dict, template: str = MASK_TEMPLATES[0], max_length: int = 256) -> str:
    """The token-mask viewer's callback: EXAMPLE under TEMPLATE as coloured HTML (errors as text)."""
    try:
        f = mask_example(tok, example, template, max_length)
    except ValueError as exc:
        import html

        return f'<p style="color:#c00">{html.escape(str(exc))}</p>'
    return mask_html(tok, f["input_ids"], f["labels"], marker_note(tok, f))


def marker_note(tok, features: dict) -> str:
    """What a marker recipe searched and whether it found it, e.g. "searched for the tokens of
    '### Response:' alone (#, #, #, ĠR, ...): not in the text's tokens"; "" for other FEATURES."""
    if "marker" not in features:
        return ""
    pieces = tok.convert_ids_to_tokens(tok(features["marker"], add_special_tokens=False)["input_ids"])
    where = ("found: trained on what follows its last occurrence" if features["marker_found"]
             else "not in the text's tokens")
    return f"searched for the tokens of {features['marker']!r} alone ({', '.join(pieces)}): {where}"
