"""Progress: which exercises and quizzes you have passed, kept in a small JSON file, and `progress()`
that shows it as a table.

The file is LABKIT_PROGRESS, default ~/.labkit/progress.json, written atomically (a temporary file,
then os.replace); a missing or corrupt file means "nothing passed yet" (a corrupt one is kept as
progress.json.corrupt). Two kernels checking at the same instant may lose one update: there is no
lock, since a lost tick in a progress list is harmless.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import atomic
from . import registry


def progress_path() -> Path:
    """LABKIT_PROGRESS, or ~/.labkit/progress.json."""
    env = os.environ.get("LABKIT_PROGRESS")
    return Path(env).expanduser() if env else Path.home() / ".labkit" / "progress.json"


def _read_progress(path: Path) -> tuple[dict, str]:
    """(data, problem): a missing file is empty progress; a corrupt one too, with a note."""
    empty = {"version": 1, "passed": {}, "attempts": {}}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return empty, ""
    except Exception as exc:
        return empty, f"the progress file {path} could not be read ({type(exc).__name__}); starting afresh"
    if not isinstance(data, dict) or not isinstance(data.get("passed"), dict):
        return empty, f"the progress file {path} is not in labkit's format; starting afresh"
    data.setdefault("attempts", {})
    if not isinstance(data["attempts"], dict):
        data["attempts"] = {}
    return data, ""


_last_progress_problem = ""


def record(item_id: str, passed: bool) -> None:
    """Count an attempt and remember a pass; never raises (progress is a convenience)."""
    global _last_progress_problem
    try:
        path = progress_path()
        data, problem = _read_progress(path)
        if problem and path.exists():  # keep the unreadable file for inspection rather than lose it
            os.replace(path, path.with_name(path.name + ".corrupt"))
        data["attempts"][item_id] = int(data["attempts"].get(item_id, 0) or 0) + 1
        if passed and item_id not in data["passed"]:
            data["passed"][item_id] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        atomic.write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        _last_progress_problem = ""
    except Exception as exc:
        _last_progress_problem = f"progress could not be saved ({type(exc).__name__}: {exc})"


@dataclass
class Progress:
    rows: list = field(default_factory=list)  # (lesson, id, title, passed_at or None, attempts)
    note: str = ""

    @property
    def passed(self) -> list[str]:
        return [r[1] for r in self.rows if r[3]]

    def __repr__(self) -> str:
        lines = [f"{len(self.passed)} of {len(self.rows)} passed"]
        for lesson, item, title, when, attempts in self.rows:
            mark = "✔" if when else ("✘" if attempts else "·")
            lines.append(f"  {mark} {lesson}  {item:<28} {title}" + (f"  (passed {when})" if when else ""))
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{l}</td><td><code>{html.escape(i)}</code></td><td>{html.escape(t)}</td>"
            f"<td>{'✔ ' + w if w else ('✘ tried' if a else '·')}</td></tr>" for l, i, t, w, a in self.rows)
        note = f"<p><i>{html.escape(self.note)}</i></p>" if self.note else ""
        return (f"<p><b>{len(self.passed)} of {len(self.rows)} passed</b></p><table><tr><th>lesson</th>"
                f"<th>exercise</th><th>title</th><th>status</th></tr>{body}</table>{note}")


def progress(lesson: str | None = None) -> Progress:
    """Which exercises and quizzes you have passed (from the progress file), of every lesson or of
    LESSON ("01", "03", ...). Never raises."""
    try:
        registry.load()
        data, problem = _read_progress(progress_path())
        rows = [(e.lesson, e.id, e.title) for e in registry.EXERCISES.values()]
        rows += [(q.lesson, q.id, "quiz: " + q.text.split("\n")[0][:50]) for q in registry.QUESTIONS.values()]
        if lesson is not None:
            rows = [r for r in rows if r[0] == str(lesson).zfill(2)]
        rows.sort(key=lambda r: r[0])
        return Progress([(l, i, t, data["passed"].get(i), data["attempts"].get(i, 0)) for l, i, t in rows],
                        problem or _last_progress_problem)
    except Exception as exc:
        return Progress([], f"progress could not be read ({type(exc).__name__}: {exc})")
