"""Library drift: every keyword the course passes to trl, transformers, peft, bitsandbytes and lm_eval must still
be accepted, so a renamed or removed argument fails here, loudly, instead of deep inside a lesson.

The scanner is generic: it reads whatever exists at test time (labkit/**/*.py, scripts/*.py and the
code cells of notebooks/, solutions/ and exercises/), finds the names imported from those libraries
(`from trl import SFTConfig`, `import bitsandbytes as bnb`, `from peft import LoraConfig as C`, ...),
and checks every call of them, and of their attributes (`PeftModel.from_pretrained`,
`bnb.nn.Linear4bit`), keyword by keyword against `inspect.signature` of the installed version.

Configs (classes named *Config or *Arguments) are checked strictly: the keyword must be a named
parameter or a dataclass field, even where `__init__` also takes **kwargs (BitsAndBytesConfig does,
and only warns about the rest). Other callables that take **kwargs (`from_pretrained`) accept any
keyword, so for them only the known renames in RENAMED are checked.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("trl", "transformers", "peft", "bitsandbytes", "lm_eval")
# Keywords that were renamed: old -> new. Checked on every call into LIBRARIES, **kwargs or not.
RENAMED = {
    "torch_dtype": "dtype (transformers 5)",
    "max_seq_length": "max_length (trl SFTConfig)",
    "evaluation_strategy": "eval_strategy (transformers)",
    "use_auth_token": "token (transformers / huggingface_hub)",
}


def course_sources() -> list[tuple[str, str]]:
    """(label, python source) for every course file: modules, scripts, notebook code cells."""
    out = []
    for pattern in ("labkit/**/*.py", "scripts/*.py"):
        for path in sorted(ROOT.glob(pattern)):
            out.append((str(path.relative_to(ROOT)), path.read_text()))
    for folder in ("notebooks", "solutions", "exercises"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            nb = json.loads(path.read_text())
            for i, cell in enumerate(nb["cells"]):
                if cell["cell_type"] == "code":
                    out.append((f"{path.relative_to(ROOT)}#cell{i}", notebook_cell_python(cell)))
    return out


def notebook_cell_python(cell) -> str:
    """A code cell's source with IPython's `!shell` and `%magic` lines replaced by `pass` at their
    indentation (kept as lines, so the line numbers still match and an `if` around one still parses)."""
    src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    def plain(line: str) -> str:
        body = line.lstrip()
        return line[: len(line) - len(body)] + "pass" if body.startswith(("!", "%")) else line
    return "\n".join(plain(line) for line in src.splitlines())


@dataclasses.dataclass
class CallSite:
    where: str           # file (and cell), line
    target: str          # dotted path, e.g. "peft.LoraConfig" or "peft.PeftModel.from_pretrained"
    keywords: list[str]


def library_calls(source: str, label: str) -> list[CallSite]:
    """Calls in SOURCE of names imported from LIBRARIES, with the keywords passed."""
    tree = ast.parse(source, filename=label)  # a course file that does not parse is a failure, not a skip
    names: dict[str, str] = {}  # local name -> dotted path in a library
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in LIBRARIES:
                    names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LIBRARIES:
                for a in node.names:
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, f = [], node.func
        while isinstance(f, ast.Attribute):
            parts.append(f.attr)
            f = f.value
        if not (isinstance(f, ast.Name) and f.id in names):
            continue
        target = ".".join([names[f.id], *reversed(parts)])
        kws = [k.arg for k in node.keywords if k.arg is not None]  # **spread: nothing to check
        calls.append(CallSite(f"{label}:{node.lineno}", target, kws))
    return calls


def resolve(target: str):
    """The object at dotted TARGET: the longest importable module prefix, then attributes."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)  # AttributeError: the name itself has gone (drift too)
        return obj
    raise ImportError(target)


def accepted_keywords(obj) -> set[str] | None:
    """The keywords OBJ accepts, or None when it accepts any (a **kwargs that is not a config's)."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(fn).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        named |= {f.name for f in dataclasses.fields(obj) if f.init}
    is_config = inspect.isclass(obj) and obj.__name__.endswith(("Config", "Arguments"))
    if any(p.kind == p.VAR_KEYWORD for p in params) and not is_config:
        return None
    return named


def problems_of(call: CallSite) -> list[str]:
    try:
        obj = resolve(call.target)
    except (ImportError, AttributeError) as exc:
        return [f"{call.where}: {call.target} no longer exists ({type(exc).__name__}: {exc})"]
    out = [f"{call.where}: {call.target}({k}=...) was renamed: use {RENAMED[k]}" for k in call.keywords
           if k in RENAMED]
    if not callable(obj):
        return out
    try:
        accepted = accepted_keywords(obj)
    except (TypeError, ValueError) as exc:  # no signature to read: say so instead of passing unchecked
        return out + [f"{call.where}: {call.target}'s keywords cannot be checked ({type(exc).__name__}: {exc})"]
    if accepted is not None:
        out += [f"{call.where}: {call.target} does not accept {k}= (installed version)"
                for k in call.keywords if k not in accepted and k not in RENAMED]
    return out


SOURCES = course_sources()
CALLS = [c for label, src in SOURCES for c in library_calls(src, label)]


def test_the_scanner_finds_the_course_calls():
    targets = {c.target for c in CALLS}
    assert "peft.LoraConfig" in targets, "the scanner should see notebook 01's LoraConfig(...)"
    assert any(c.where.startswith("notebooks/") for c in CALLS)


@pytest.mark.parametrize("label", sorted({c.where.split(":")[0].split("#")[0] for c in CALLS}))
def test_keywords_match_the_installed_libraries(label):
    problems = [p for c in CALLS if c.where.split(":")[0].split("#")[0] == label for p in problems_of(c)]
    assert not problems, "library drift:\n" + "\n".join(problems)


def test_lm_eval_calls_name_real_parameters():
    """lm-eval's HFLM takes **kwargs and hands unknown ones on to from_pretrained, so a misspelt or renamed
    keyword would not fail loudly: every keyword the course passes to lm_eval, and every key of the
    --model_args it prints (labkit.harness.command_line), must be a named parameter."""
    from lm_eval.models.huggingface import HFLM

    from labkit import harness

    calls = [c for c in CALLS if c.target.startswith("lm_eval")]
    assert {"lm_eval.simple_evaluate", "lm_eval.models.huggingface.HFLM", "lm_eval.tasks.TaskManager"} <= {
        c.target for c in calls}, "the scanner should see lesson 13's lm-eval calls"
    problems = []
    for c in calls:
        obj = resolve(c.target)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        named = set(inspect.signature(fn).parameters)
        problems += [f"{c.where}: {c.target} has no parameter {k}=" for k in c.keywords if k not in named]
    model_args = harness.command_line("/m", "/t", adapter="/a").split("--model_args ")[1].split()[0]
    hflm = set(inspect.signature(HFLM.__init__).parameters)
    problems += [f"--model_args {k}= is not an HFLM parameter" for k in (a.split("=")[0] for a in model_args.split(","))
                 if k not in hflm]
    assert not problems, "library drift:\n" + "\n".join(problems)


def test_the_course_task_yaml_uses_lm_evals_task_config_fields():
    """Every top-level key of the shipped task YAMLs is a field of lm-eval's TaskConfig, and the exact-match
    options are parameters of its metric (lm-eval would otherwise ignore or reject them)."""
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.config.task import TaskConfig

    from labkit import harness

    fields = {f.name for f in dataclasses.fields(TaskConfig)}
    for path in sorted(harness.TASKS_DIR.glob("*.yaml")):
        text = path.read_text().replace("!function ", "")
        cfg = yaml.safe_load(text)
        assert set(cfg) <= fields, f"{path.name}: {set(cfg) - fields} are not TaskConfig fields"
        for metric in cfg.get("metric_list", []):
            extra = set(metric) - {"metric", "aggregation", "higher_is_better"}
            if metric["metric"] == "exact_match":
                assert extra <= set(inspect.signature(exact_match_hf_evaluate).parameters), extra


# ---------------------------------------------------------------------------------------------
# The scanner itself, on small made-up sources


def test_a_renamed_config_field_is_caught():
    src = "from trl import SFTConfig\ncfg = SFTConfig(output_dir='o', max_seq_length=128, bf16=False)\n"
    (call,) = library_calls(src, "x.py")
    assert call.target == "trl.SFTConfig" and call.keywords == ["output_dir", "max_seq_length", "bf16"]
    assert [p for p in problems_of(call) if "max_seq_length" in p]
    assert not [p for p in problems_of(call) if "bf16" in p or "output_dir" in p]


def test_an_unknown_keyword_is_caught_through_aliases_and_attributes():
    src = ("import peft as P\nimport bitsandbytes as bnb\nfrom transformers import BitsAndBytesConfig as B\n"
           "P.LoraConfig(r=8, lora_alphaa=16)\nbnb.nn.Linear4bit(4, 4, bias=False)\n"
           "B(load_in_4bit=True, bnb_4bit_quant_typ='nf4')\n")
    calls = library_calls(src, "x.py")
    assert sorted(c.target for c in calls) == ["bitsandbytes.nn.Linear4bit", "peft.LoraConfig",
                                               "transformers.BitsAndBytesConfig"]
    found = {c.target: problems_of(c) for c in calls}
    assert any("lora_alphaa" in p for p in found["peft.LoraConfig"])
    assert found["bitsandbytes.nn.Linear4bit"] == []
    # BitsAndBytesConfig takes **kwargs (it only warns): as a config it is checked strictly anyway
    assert any("bnb_4bit_quant_typ" in p for p in found["transformers.BitsAndBytesConfig"])


def test_kwargs_callables_accept_anything_but_known_renames():
    src = ("from transformers import AutoModelForCausalLM\n"
           "AutoModelForCausalLM.from_pretrained('m', device_map='cpu', torch_dtype='float32')\n")
    (call,) = library_calls(src, "x.py")
    assert [p for p in problems_of(call)] == [
        "x.py:2: transformers.AutoModelForCausalLM.from_pretrained(torch_dtype=...) was renamed: "
        "use dtype (transformers 5)"]


def test_a_vanished_name_is_caught():
    (call,) = library_calls("from trl import PPOTrainer\nPPOTrainer(model=None)\n", "x.py")
    assert problems_of(call) and "no longer exists" in problems_of(call)[0]


def test_notebook_magics_do_not_break_the_scan():
    cell = {"source": ["!pip install x\n", "%time y = 1\n", "from peft import LoraConfig\n", "LoraConfig(r=4)\n"]}
    (call,) = library_calls(notebook_cell_python(cell), "nb#cell0")
    assert call.where == "nb#cell0:4"
