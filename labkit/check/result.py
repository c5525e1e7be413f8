"""What a check or a quiz answers: a Result that reads as one line of text, or a coloured box in Jupyter."""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass
class Result:
    passed: bool
    message: str
    exercise: str = ""
    case: str | None = None  # the first failing case, if any
    output: str = ""  # what the candidate printed in that case (truncated)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__

    def _repr_pretty_(self, p, cycle):  # IPython's plain-text display
        p.text(self.message)

    def _repr_html_(self) -> str:
        if self.message.startswith(("?", "…")):  # a question shown, or not answered yet: nothing judged
            colour, bg = "#0b57d0", "#e8f0fe"
        else:
            colour, bg = ("#1a7f37", "#e6f4ea") if self.passed else ("#b3261e", "#fdecea")
        lines = html.escape(self.message).split("\n")
        head, rest = lines[0], "<br>".join(lines[1:])
        return (f'<div style="border-left:4px solid {colour};background:{bg};padding:6px 10px;'
                f'font-family:monospace;white-space:pre-wrap"><b>{head}</b>'
                f'{"<br>" + rest if rest else ""}</div>')


def pending(item_id: str, what_to_do: str) -> Result:
    """Not answered yet: a neutral (blue) box that says what to do, never a red failure."""
    return Result(False, f"… {item_id}: not answered yet\n  {what_to_do}", item_id)


def fail(item_id: str, problem: str, case: str | None = None, hint: str = "", output: str = "") -> Result:
    """A failed Result: the case, the problem, the hint and what the candidate printed, one per line."""
    lines = [f"✘ {item_id}: not passed"]
    if case:
        lines.append(f"  case:    {case}")
    lines.append(f"  problem: {problem}")
    if hint:
        lines.append(f"  hint:    {hint}")
    if output:
        lines.append("  your function printed:\n" + "\n".join("    " + ln for ln in output.splitlines()))
    return Result(False, "\n".join(lines), item_id, case, output)
