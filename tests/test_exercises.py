"""The course's exercises: every reference passes, near-misses fail without leaking the answer, the
solutions and exercises notebooks run, exercises/ is what `labkit exercises build` makes of solutions/,
and quiz answers are not readable in labkit/ or exercises/."""

import ast
import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit import check as C
from labkit.check import grade
from labkit import evaluate, lora, memory, quant, sft
from labkit.course import exercise_notebooks as nbs

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


pytestmark = pytest.mark.usefixtures("checker_env")


def _nb(path):
    return json.loads(Path(path).read_text())


def _src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


# ---------------------------------------------------------------------------------------------
# The registry


def test_there_are_enough_exercises_and_quizzes():
    assert len(C.exercises()) >= 15 and len(C.quizzes()) >= 6
    for must in ("lora_forward", "lora_param_count", "lora_merge", "nf4_quantize", "nf4_dequantize",
                 "memory_estimate", "perplexity_from_logits", "exact_match", "reward_loss", "ppo_policy_loss",
                 "kl_penalised_rewards", "sequence_logps", "dpo_loss", "top_k_retrieval"):
        assert must in C.exercises()


@pytest.fixture(scope="module")
def solutions():
    """{exercise id: the function its solutions notebook writes}: each notebook's solution cells run in order in
    one namespace (a later solution may call an earlier one), after its preamble's code cells. These are
    written out by hand in the notebooks, apart from the references in labkit/checks/ that grade them."""
    found = {}
    for path in SOLUTIONS:
        nb, current = _nb(path), None
        preamble = []
        for cell in nb["cells"]:
            tags = cell.get("metadata", {}).get("tags", [])  # a section starts at its tagged (markdown) cell
            current = next((t[len(nbs.TAG_PREFIX):] for t in tags if t.startswith(nbs.TAG_PREFIX)), current)
            if cell["cell_type"] != "code":
                continue
            src = _src(cell)
            if current is None:  # the preamble as the learner runs it (imports, a tokenizer), not the Colab install
                if "google.colab" not in src:
                    preamble.append(src)
                continue
            if current not in C.exercises() or "### BEGIN SOLUTION" not in src:
                continue
            ns = found.setdefault(path.name, {})
            if not ns:
                exec("\n".join(preamble), ns)  # noqa: S102 (the course's own notebooks)
            exec(src, ns)  # noqa: S102
            name = [n.name for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)][-1]
            found[current] = ns[name]
    return {k: v for k, v in found.items() if k in C.exercises()}


@pytest.mark.parametrize("exercise_id", C.exercises())
def test_the_solution_notebooks_own_implementation_passes(exercise_id, solutions):
    """The reference graded against an implementation written apart from it (the solutions notebook's), on the
    public and two seeds' hidden cases: a wrong reference fails here (grading the reference against itself
    could not)."""
    assert exercise_id in solutions, f"solutions/ writes no function for {exercise_id}"
    assert solutions[exercise_id] is not C.get(exercise_id).reference
    for seed in (0, 1):
        result = C.check(exercise_id, solutions[exercise_id], seed=seed)
        assert result.passed, result.message


@pytest.mark.parametrize("exercise_id", C.exercises())
def test_cases_are_public_and_hidden_and_hidden_ones_change_with_the_seed(exercise_id):
    import random

    ex = C.get(exercise_id)
    assert ex.public() and ex.hidden(random.Random(0))
    a, b = ex.hidden(random.Random(0)), ex.hidden(random.Random(1))
    assert C.describe_inputs(a[0].inputs) != C.describe_inputs(b[0].inputs) or any(
        grade.modified(a[0].inputs[k], b[0].inputs[k]) for k in a[0].inputs)


def _digits(value):
    """Strings a message could leak VALUE as."""
    if isinstance(value, torch.Tensor):
        vals = value.flatten()[:6].tolist()
    elif isinstance(value, dict):
        return [s for v in value.values() for s in _digits(v)]
    elif isinstance(value, (tuple, list)):
        return [s for v in value for s in _digits(v)]
    else:
        vals = [value]
    out = []
    for v in vals:
        if isinstance(v, float):
            out += [f"{v:.4f}", f"{v:.3g}"]
        elif isinstance(v, int) and abs(v) >= 100 and v != -100:  # -100 is the ignore label, named in hints
            out += [str(v), f"{v:,}"]
    return [s for s in out if len(s) >= 4]


NEAR_MISSES = {
    # alpha instead of alpha / r
    "lora_forward": lambda x, W, b, A, B, alpha, r: x @ W.T + (0 if b is None else b) + alpha * (x @ A.T @ B.T),
    "lora_scaling": lambda alpha, r, rslora: alpha / r,  # forgets rsLoRA
    # counts only d_in
    "lora_param_count": lambda model, r, targets: sum(
        r * m.in_features for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets),
    "lora_merge": lambda W, A, B, alpha, r: W + alpha * (B @ A),
    # divides blocks along rows instead of the flattened weight
    "nf4_quantize": lambda w, bs: quant.quantize_nf4(w.T.contiguous(), bs),
    "nf4_dequantize": lambda c, a, shape, bs: quant.dequantize_nf4(c, a, shape, bs) * 1.01,
    "nf4_bits_per_parameter": lambda bs, dq, bs2: 4 + 32 / bs,  # ignores double quantisation
    "memory_estimate": lambda n, m, lp: {**memory.estimate_memory(n, m, lora_params=lp, master_weights=False)},
    # no shift
    "perplexity_from_logits": lambda logits, labels: math.exp(torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100).item()),
    "exact_match": lambda p, r: evaluate.exact_match(p, r, normalize=False),
    "trainable_summary": lambda model: lora.trainable_summary(model).replace(",", ""),  # no separators
    "completion_labels": lambda ids, p: torch.cat([torch.full((p + 1,), -100), ids[p + 1:]]),  # one too many
    "pad_collate": lambda features, pad: {  # pads the labels with the pad id
        k: v.masked_fill((v == -100) & (batch["attention_mask"] == 0), pad) if k == "labels" else v
        for batch in [sft.PadCollator(pad)(features)] for k, v in batch.items()},
}


@pytest.mark.parametrize("exercise_id", sorted(NEAR_MISSES))
def test_a_near_miss_fails_naming_the_case_without_the_expected_values(exercise_id):
    ex = C.get(exercise_id)
    result = C.check(exercise_id, NEAR_MISSES[exercise_id], seed=3)
    assert not result.passed
    assert "case" in result.message and result.case and "problem:" in result.message
    # the failing case's expected value is nowhere in the message
    for case in ex.public():
        expected = ex.reference(*copy.deepcopy(case.inputs).values())
        for s in _digits(expected):
            assert s not in result.message, (s, result.message)


def test_every_exercise_and_quiz_is_in_a_solutions_notebook():
    ids = [i for p in SOLUTIONS for i in nbs.section_ids(_nb(p))]
    assert sorted(ids) == sorted(C.exercises() + C.quizzes())
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_each_section_checks_its_own_exercise(path):
    nb = _nb(path)
    for ex_id in nbs.section_ids(nb):
        section = nbs.select(nb, {ex_id})["cells"]
        text = "\n".join(_src(c) for c in section)
        assert re.search(rf'(check|quiz)\("{ex_id}"', text), ex_id
        assert "### BEGIN SOLUTION" in text, ex_id


# ---------------------------------------------------------------------------------------------
# exercises/ is generated, and the generator's rules


def test_exercises_folder_is_what_the_build_command_generates():
    assert nbs.stale() == [], "exercises/ is stale: run `labkit exercises build` and commit"
    assert [p.name for p in EXERCISES] == [p.name for p in SOLUTIONS]


def test_a_stale_or_extra_exercise_notebook_is_reported(tmp_path):
    out = tmp_path / "ex"
    nbs.build(out=out)
    assert nbs.stale(out=out) == []
    first = sorted(out.glob("*.ipynb"))[0]
    first.write_text(first.read_text().replace("raise NotImplementedError", "return 0", 1))
    (out / "99_extra.ipynb").write_text("{}")
    problems = nbs.stale(out=out)
    assert any(first.name in p and "differs" in p for p in problems)
    assert any("99_extra" in p for p in problems)


def test_stub_keeps_signature_docstring_and_indentation():
    src = ('def f(x, y=2):\n    """Doc."""\n    z = 1\n    ### BEGIN SOLUTION\n    return x + y\n'
           '    ### END SOLUTION\n\nclass K:\n    def g(self):\n        ### BEGIN SOLUTION\n        pass\n'
           '        ### END SOLUTION\n')
    out = nbs.stub_source(src)
    assert 'def f(x, y=2):\n    """Doc."""\n    z = 1\n    raise NotImplementedError(' in out
    assert '        raise NotImplementedError(' in out and "return x + y" not in out
    ast.parse(out)


def test_top_level_regions_become_placeholders_and_markdown_is_blanked():
    out = nbs.stub_source('### BEGIN SOLUTION\nanswer = 42\nother, more = 1, 2\n### END SOLUTION\nquiz("q", answer)')
    assert out == 'answer = ...  # YOUR ANSWER HERE\nother = ...  # YOUR ANSWER HERE\n' \
                  'more = ...  # YOUR ANSWER HERE\nquiz("q", answer)'
    assert "42" not in out
    assert nbs.stub_source("A\n### BEGIN SOLUTION\nsecret\n### END SOLUTION", markdown=True) == "A\n_Your answer here._"


@pytest.mark.parametrize("src", ["### BEGIN SOLUTION\nx", "x\n### END SOLUTION",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_unbalanced_markers_are_errors(src):
    with pytest.raises(nbs.MarkerError):
        nbs.stub_source(src)


@pytest.mark.parametrize("folder", ["solutions", "exercises"])
def test_notebooks_have_no_outputs(folder):
    # (their Colab badge and install cell: tests/test_links.py, for every notebook)
    for path in sorted((ROOT / folder).glob("*.ipynb")):
        cells = _nb(path)["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, "commit notebooks without outputs"


def test_exercise_notebooks_have_no_solutions_and_no_outputs():
    for path in EXERCISES:
        nb = _nb(path)
        text = "\n".join(_src(c) for c in nb["cells"])
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None


def test_workshop_subset_holds_only_the_chosen_exercises(tmp_path):
    out = tmp_path / "ws"
    written = nbs.workshop(["lora_forward", "nf4_quantize"], out, with_solutions=True)
    names = sorted(p.relative_to(out).as_posix() for p in written)
    assert names == ["01_lora_from_scratch_exercises.ipynb", "04_quantisation_exercises.ipynb",
                     "solutions/01_lora_from_scratch_exercises.ipynb", "solutions/04_quantisation_exercises.ipynb"]
    nb01 = _nb(out / "01_lora_from_scratch_exercises.ipynb")
    assert nbs.section_ids(nb01) == ["lora_forward"]
    text = "\n".join(_src(c) for c in nb01["cells"])
    assert "def lora_forward" in text and "def lora_merge" not in text and "import torch" in text
    assert "progress()" in text and "BEGIN SOLUTION" not in text
    with pytest.raises(ValueError, match="unknown exercise"):
        nbs.workshop(["no_such_exercise"], tmp_path / "x")


def test_cli_builds_a_workshop_and_checks_freshness(tmp_path, capsys):
    from labkit.course import cli

    assert cli.main(["exercises", "workshop", "--only", "exact_match,q13_ppl_from_nll", "--out", str(tmp_path / "w")]) == 0
    assert nbs.section_ids(_nb(tmp_path / "w" / "13_evaluation_exercises.ipynb")) == ["exact_match", "q13_ppl_from_nll"]
    assert cli.main(["exercises", "check"]) == 0
    assert cli.main(["exercises", "check", "--out", str(tmp_path / "w")]) == 1  # a subset is not the full set
    assert cli.main(["exercises", "workshop", "--only", "nope", "--out", str(tmp_path / "w2")]) == 1
    assert "unknown exercise" in capsys.readouterr().err
    assert cli.main(["exercises", "list"]) == 0
    out = capsys.readouterr().out
    assert "lora_forward" in out and "q01_merge_cost" in out
    assert cli.main(["exercises", "hash", "q01_merge_cost", "B"]) == 0
    assert capsys.readouterr().out.strip() == C.get("q01_merge_cost").answer_hash


def test_exercises_command_is_wired_into_the_labkit_command():
    r = subprocess.run([sys.executable, "-m", "labkit.course.cli", "exercises", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "workshop" in r.stdout and "build" in r.stdout


# ---------------------------------------------------------------------------------------------
# Quiz answers are stored hashed


def _quiz_answers():
    """{question id: the answer value} from the solution regions of the solutions notebooks."""
    answers = {}
    for path in SOLUTIONS:
        for cell in _nb(path)["cells"]:
            src = _src(cell)
            m = re.search(r'### BEGIN SOLUTION\n(.*?)### END SOLUTION\nquiz\("(\w+)", answer\)', src, re.S)
            if m:
                namespace = {"math": math}
                exec(m.group(1), namespace)
                answers[m.group(2)] = namespace["answer"]
    return answers


def _leak_strings(value):
    if isinstance(value, str):
        return []  # a letter: checked structurally below
    out = {repr(value), str(value)}
    if float(value).is_integer():
        out |= {str(int(value)), f"{int(value):,}", f"{int(value):_}"}
    else:
        out |= {f"{value:.{d}f}" for d in (2, 3, 4)}
    return [s for s in out if len(s) >= 4]


def test_quiz_answers_are_right_and_wrong_answers_are_not():
    answers = _quiz_answers()
    assert sorted(answers) == sorted(C.quizzes())
    for qid, answer in answers.items():
        assert C.quiz(qid, answer).passed, qid
        q = C.get(qid)
        if q.kind == "number":
            assert C.quiz(qid, str(answer)).passed
            assert not C.quiz(qid, answer * 1.1 + 1).passed
            assert not C.quiz(qid, -answer).passed
        else:
            wrong = next(letter for letter in "abc" if letter != answer)
            assert not C.quiz(qid, wrong).passed
            assert C.quiz(qid, f"({answer.upper()})").passed
            assert C.quiz(qid, q.choices["abc".index(answer)]).passed  # the choice's text works too


def test_every_wrong_choice_gets_feedback_about_that_choice():
    """A learner who picks a wrong choice is told why that choice is wrong: every wrong letter of every
    choice question has its own feedback, and the right one has none (it would give the answer away)."""
    answers = _quiz_answers()
    missing = []
    for qid in C.quizzes():
        q = C.get(qid)
        if q.kind != "choice":
            continue
        wrong = {letter for letter in "abcdefghij"[:len(q.choices)] if letter != answers[qid]}
        if set(q.feedback or {}) != wrong:
            missing.append(f"{qid}: feedback for {sorted(q.feedback or {})}, wrong choices {sorted(wrong)}")
        else:
            message = C.quiz(qid, sorted(wrong)[0]).message
            assert q.feedback[sorted(wrong)[0]] in message and "such as" not in message, message
    assert not missing, "\n".join(missing)


def test_quiz_answers_are_not_in_plain_text_in_labkit_or_exercises():
    files = list((ROOT / "labkit").rglob("*.py")) + EXERCISES
    corpus = "\n".join(p.read_text() for p in files)
    for qid, answer in _quiz_answers().items():
        for s in _leak_strings(answer):
            assert s not in corpus, f"the answer to {qid} appears as {s!r}"
    for qid in C.quizzes():
        q = C.get(qid)
        assert set(vars(q)) == {"id", "lesson", "text", "kind", "answer_hash", "choices", "rtol", "atol", "hint", "feedback"}
        assert re.fullmatch(r"[0-9a-f]{24}", q.answer_hash)


# ---------------------------------------------------------------------------------------------
# The notebooks run: solutions pass every check, exercises run to the end and pass none


CPU_PROBE = ("import resource as _r\n"  # the kernel and the checks' children it has reaped
             "print('kernel CPU seconds', sum(u.ru_utime + u.ru_stime for u in map(_r.getrusage, (_r.RUSAGE_SELF, _r.RUSAGE_CHILDREN))))")


def _execute(path, tmp_path, cpu=False):
    """Run the notebook PATH in a kernel. cpu=True: returns (nb, the kernel's CPU seconds), read by a last cell
    that is removed again; CPU time, unlike wall time, does not grow when the machine is busy."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if cpu:
        nb.cells.append(nbformat.v4.new_code_cell(CPU_PROBE))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   allow_errors=False).execute()
    if not cpu:
        return nb
    probe = nb.cells.pop()
    return nb, float("".join(o.get("text", "") for o in probe.outputs).split()[-1])


def _results(nb):
    """(calls, result lines): the check()/quiz(id, answer) calls and what they displayed."""
    calls, shown = 0, []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source
        calls += len(re.findall(r"^(check\(|quiz\(\"\w+\", )", src, re.M))
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/plain", "") if out.get("output_type") == "execute_result" else ""
            first = text.split("\n", 1)[0]
            if first[:1] in "✔✘…":
                shown.append(first)
    return calls, shown


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_notebook_runs_and_passes_every_check(path, tmp_path):
    nb, cpu = _execute(path, tmp_path, cpu=True)
    calls, shown = _results(nb)
    assert calls == len(nbs.section_ids(_nb(path))) and len(shown) == calls
    assert all(s.startswith("✔") for s in shown), shown
    passed = json.loads((tmp_path / "progress.json").read_text())["passed"]
    assert set(nbs.section_ids(_nb(path))) <= set(passed)
    print(f"{path.name}: kernel CPU {cpu:.1f} s")
    assert cpu < 60, f"a solutions notebook is a few checks (measured about 2 s of CPU), not a training run: {cpu:.0f} s"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercises_notebook_runs_to_the_end_and_passes_nothing(path, tmp_path):
    nb = _execute(path, tmp_path)  # allow_errors=False: any exception fails here
    calls, shown = _results(nb)
    assert calls == len(nbs.section_ids(_nb(path))) and len(shown) == calls
    # unanswered, every quiz and every stub shows a neutral "not answered yet", never a red failure
    assert all(s.startswith("…") and s.endswith(": not answered yet") for s in shown), shown
    text = "\n".join(o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", []))
    ids = nbs.section_ids(_nb(path))
    assert ("not implemented yet" in text) == any(i in C.exercises() for i in ids)
    assert "0 of" in text  # progress(): nothing passed
