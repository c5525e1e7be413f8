"""Auto-checked exercises: `check(exercise_id, your_function)` and `quiz(question_id, answer)`.

    from labkit.check import check, quiz, progress
    check("lora_forward", lora_forward)     # -> ✔ passed, or ✘ the first failing case and a hint
    quiz("q01_merge_cost", "b")             # (no answer yet, or a stub that raises NotImplementedError:
                                            #  a neutral "… not answered yet", never a red failure)
    progress()                              # what you have passed so far

A generic engine, one idea per module; the exercises themselves are registered by the lesson modules
in labkit/checks/ (one per lesson; see labkit/checks/__init__.py for how to add one):

    registry   what a lesson module registers (Case, Exercise, Question) and the lookups
    compare    the comparators (tensor, number, integer, text, sequence, mapping): what is wrong,
               never the reference's values
    sandbox    a forked child (or a thread) with limits on time, memory and printed output
    grade      check(): every case run in the sandbox and compared with labkit's reference
    answers    quiz(): questions, and answers stored as salted hashes
    record     progress(): the passes and attempts in a JSON file
    result     Result, what check() and quiz() return (text, or a coloured box in Jupyter)

What it shares with nbgrader: only the solution markers. A solutions notebook (solutions/) puts each
answer between `### BEGIN SOLUTION` and `### END SOLUTION` lines, nbgrader's default delimiters, and
labkit.course.exercise_notebooks strips each region into a stub as nbgrader's `generate_assignment` does (a
function body becomes `raise NotImplementedError(...)` at its indentation; a top-level region becomes
`NAME = ...  # YOUR ANSWER HERE`, a markdown one "_Your answer here._"). What it does not share: no
nbgrader cell metadata (a section is a cell tagged `exercise:<id>`), no test cells in the notebook
(no `### BEGIN HIDDEN TESTS`), no points, gradebook, collect or feedback. The tests are Python cases
in labkit/checks/, public and random hidden ones, run whenever the learner calls check() and judged
against labkit's own implementation; the only record is the learner's local progress file.
"""

from .answers import answer_hash, quiz
from .compare import describe_inputs, integer, mapping, number, sequence, tensor, text
from .grade import check
from .record import progress, progress_path
from .registry import Case, Question, as_rng, exercise, exercises, get, question, quizzes, randn
from .result import Result

__all__ = ["check", "quiz", "progress",  # the learner's three
           "Case", "exercise", "question", "randn", "as_rng",  # what a lesson module in labkit/checks/ registers
           "tensor", "number", "integer", "text", "sequence", "mapping",  # its comparators
           "exercises", "quizzes", "get", "answer_hash", "Question", "Result",  # lookups (cli, interview, tests)
           "describe_inputs", "progress_path"]
