"""The exercises and quiz questions of each lesson, one module per lesson (lesson01.py, lesson03.py, ...).

labkit.check imports every module in this folder the first time it needs the registry, so adding an
exercise touches one place: the lesson's module here (plus its cell in solutions/).

Adding a coding exercise (e.g. to a new labkit/checks/lesson04.py):

    from labkit.check import Case, exercise, randn, tensor
    from labkit import sft

    def _public():                       # fixed cases: the same for every learner
        return [Case({"input_ids": torch.tensor([[5, 6, 7, 8]]), "prompt_length": 2}, "one row")]

    def _hidden(rng):                    # rng: random.Random, seeded anew on every check() call
        n = rng.randint(3, 40)
        return [Case({"input_ids": torch.randint(0, 100, (2, n)), "prompt_length": rng.randint(1, n - 1)},
                     hint="the first prompt_length positions are -100, every other label is the input id")]

    exercise(id="completion_labels", lesson="04", title="Labels that ignore the prompt",
             signature="completion_labels(input_ids, prompt_length)",
             reference=sft.completion_labels, public=_public, hidden=_hidden,
             compare=tensor(integer=True), hint="clone input_ids, then set labels[:, :prompt_length] = -100")

- inputs are passed positionally, in the dict's order; the dict's keys name them in feedback;
- reference is labkit's own function (never a copy of it); the candidate and the reference each get
  their own deep copy of the inputs, and a candidate that changes its inputs fails;
- compare(got, expected, case) returns None or what is wrong, WITHOUT expected's values: use the
  comparators in labkit.check (tensor, number, integer, sequence, mapping) or write one in that style;
- hints say what to look at, not the answer. A case's own hint wins over the exercise's.

Adding a quiz question:

    from labkit.check import question
    question(id="q04_mask", lesson="04", kind="choice", text="Which tokens get label -100?",
             choices=("the prompt's", "the answer's", "none"), answer_hash="...")

Get answer_hash with labkit.check.answer_hash("q04_mask", "a", "choice", choices=(...)), or
`labkit exercises hash q04_mask a --choices ...`; for numbers pass kind="number" and rtol= or atol=
(the same to answer_hash and question). Only the hash is stored here; the plain answer lives in the
solutions notebook's `### BEGIN SOLUTION` region (solutions/ is the answer key; tests check that the
answers do not appear in labkit/ or exercises/).

Then add the exercise to a solutions notebook (a markdown cell tagged `exercise:<id>`, the code cell
with `### BEGIN SOLUTION` / `### END SOLUTION`, and a cell calling check/quiz) and run
`labkit exercises build` to regenerate exercises/.
"""
