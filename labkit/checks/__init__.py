"""The exercises and quiz questions of each lesson, one module per lesson (lesson01.py, lesson03.py, ...).

labkit.check imports every module in this folder the first time it needs the registry, so adding an
exercise touches one place: the lesson's module here (plus its cell in solutions/).

Adding a coding exercise (a sketch of the Bradley-Terry loss; labkit/checks/lesson08.py holds the real one):

    import torch
    from labkit import preference
    from labkit.check import Case, exercise, number, randn

    LESSON = "05"

    def _public():                       # fixed cases: the same for every learner
        return [Case({"r_chosen": torch.tensor([1.0, 0.5]), "r_rejected": torch.tensor([0.0, 0.7])},
                     "two pairs, one ranked wrongly")]

    def _hidden(rng):                    # rng: random.Random, seeded anew on every check() call
        return [Case({"r_chosen": randn(rng, n), "r_rejected": randn(rng, n)}, hint="mean over the pairs")
                for n in (rng.randint(1, 16) for _ in range(5))]

    exercise(id="reward_loss", lesson=LESSON, title="The Bradley-Terry reward-model loss",
             signature="reward_loss(r_chosen, r_rejected)",
             reference=lambda a, b: preference.reward_loss(a, b).item(),
             public=_public, hidden=_hidden, compare=number(rtol=1e-5),
             hint="-log sigmoid(r_chosen - r_rejected), averaged over the pairs")

lesson04.py is a short real example (tensors in, integer tensors out, a dict of tensors); lesson08.py
draws hidden cases without near-ties, for an answer compared exactly (an order of indices).

- inputs are passed positionally, in the dict's order; the dict's keys name them in feedback;
- reference is labkit's own function (never a copy of it); the candidate and the reference each get
  their own deep copy of the inputs, and a candidate that changes its inputs fails;
- compare(got, expected, case) returns None or what is wrong, WITHOUT expected's values: use the
  comparators in labkit.check (tensor, number, integer, text, sequence, mapping) or write one in that style;
- hints say what to look at, not the answer. A case's own hint wins over the exercise's.

Adding a quiz question:

    from labkit.check import question
    question(id="q08_mask", lesson="05", kind="choice", text="Which tokens get label -100?",
             choices=("the prompt's", "the answer's", "none"), answer_hash="...")

Get answer_hash with labkit.check.answer_hash("q08_mask", "a") or `labkit exercises hash q08_mask a`
(store the right choice's letter; learners may answer with the letter or the choice's text). For
numbers: answer_hash("q08_n", 0.25, "number", rtol=0.01) and question(..., kind="number", rtol=0.01)
(the same tolerance in both), or `labkit exercises hash q08_n 0.25 --kind number --rtol 0.01`.
Only the hash is stored here; the plain answer lives in the solutions notebook's `### BEGIN SOLUTION`
region (solutions/ is the answer key; tests check that the answers do not appear in labkit/ or
exercises/).

Then add the exercise to a solutions notebook (a markdown cell tagged `exercise:<id>`, the code cell
with `### BEGIN SOLUTION` / `### END SOLUTION`, and a cell calling check/quiz) and run
`labkit exercises build` to regenerate exercises/. A quiz's answer cell has exactly this shape (the
tests read the answer from it):

    ### BEGIN SOLUTION
    answer = "b"
    ### END SOLUTION
    quiz("q08_mask", answer)
"""
