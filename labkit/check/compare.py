"""The comparators: compare(got, expected, case) returns None when GOT is right, else what is wrong,
in words that never contain EXPECTED's values (shapes, dtypes, counts and the first wrong index are
fine; the reference's numbers are not). Also the short descriptions of inputs that name a case."""

from __future__ import annotations

import math
import numbers

# ---------------------------------------------------------------------------------------------
# Describing values without giving anything away


def type_name(x) -> str:
    """"None", "int", "torch.Tensor", "numpy.ndarray": the type's name, with its package if not a builtin."""
    if x is None:
        return "None"
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__.split('.')[0]}.{t.__name__}"


def describe(x) -> str:
    """A short description of an INPUT (shapes and dtypes for tensors, the value for small scalars)."""
    import torch
    from torch import nn

    if isinstance(x, torch.Tensor):
        dev = "" if x.device.type == "cpu" else f" on {x.device.type}"
        return f"tensor {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}{dev}"
    if isinstance(x, nn.Module):
        n_linear = sum(isinstance(m, nn.Linear) for m in x.modules())
        dev = next((p.device.type for p in x.parameters()), "cpu")
        return f"a {type(x).__name__} with {n_linear} nn.Linear layers (on {dev})"
    if isinstance(x, (list, tuple)):
        if x and all(isinstance(v, str) for v in x):
            return repr(x) if len(repr(x)) <= 120 else f"{type(x).__name__} of {len(x)} strings"
        inner = ", ".join(describe(v) for v in list(x)[:4]) + (", ..." if len(x) > 4 else "")
        return f"[{inner}]" if isinstance(x, list) else f"({inner})"
    if isinstance(x, dict) and any(isinstance(v, (torch.Tensor, list, tuple, dict)) for v in x.values()):
        inner = ", ".join(f"{k!r}: {describe(v)}" for k, v in list(x.items())[:4]) + (", ..." if len(x) > 4 else "")
        return "{" + inner + "}"
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def describe_inputs(inputs: dict) -> str:
    """"x (2, 5, 16) float32, b=None, r=4": names with shapes, or values for small scalars."""
    parts = []
    for name, value in inputs.items():
        d = describe(value)
        if d.startswith("tensor "):
            parts.append(f"{name} {d[len('tensor '):]}")
        elif d.startswith("a ") and " with " in d:
            parts.append(f"{name}: {d}")
        else:
            parts.append(f"{name}={d}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Comparators


def tensor(rtol: float = 1e-5, atol: float = 1e-6, integer: bool = False, check_dtype: bool = True):
    """GOT must be a torch.Tensor of the reference's shape (and dtype, or any integer dtype if
    INTEGER), finite where the reference is, and equal within rtol/atol (exactly if INTEGER)."""

    def compare(got, exp, case=None):
        import torch

        if not isinstance(got, torch.Tensor):
            return f"returned {type_name(got)}; expected a torch.Tensor"
        if tuple(got.shape) != tuple(exp.shape):
            return f"returned shape {tuple(got.shape)}; expected shape {tuple(exp.shape)}"
        if integer:
            if got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
                return f"returned dtype {got.dtype}; expected integer indices (e.g. torch.uint8 or torch.long)"
        elif check_dtype and got.dtype != exp.dtype:
            return f"returned dtype {got.dtype}; expected {exp.dtype}"
        g, e = got.detach().cpu(), exp.detach().cpu()
        if g.is_floating_point():
            bad = ~torch.isfinite(g) & torch.isfinite(e)
            if bad.any():
                return f"the result contains NaN or inf ({int(bad.sum())} of {g.numel()} values)"
        if integer:
            wrong = g.long() != e.long()
        else:
            wrong = ~torch.isclose(g.double(), e.double(), rtol=rtol, atol=atol, equal_nan=True)
        if wrong.any():
            first = tuple(int(i) for i in wrong.nonzero()[0])
            tol = "" if integer else f" beyond tolerance (rtol={rtol:g}, atol={atol:g})"
            return (f"{int(wrong.sum())} of {g.numel()} values differ from the reference{tol}; "
                    f"the first at index {first}")
        return None

    return compare


def number(rtol: float = 1e-6, atol: float = 0.0):
    """GOT must be one real number (int, float, numpy or 0-d tensor) close to the reference."""

    def compare(got, exp, case=None):
        value, problem = _as_number(got)
        if problem:
            return problem
        if not math.isfinite(value):
            return f"returned {value}; expected a finite number"
        if not math.isclose(value, float(exp), rel_tol=rtol, abs_tol=atol):
            return f"the number is not right (checked to rtol={rtol:g}" + (f", atol={atol:g})" if atol else ")")
        return None

    return compare


def _as_number(got):
    """(value, None) for one real number, or (None, what is wrong)."""
    import torch

    if isinstance(got, bool) or got is None:
        return None, f"returned {type_name(got)}; expected a number"
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return None, f"returned a tensor of shape {tuple(got.shape)}; expected a single number"
        return float(got.detach().cpu().reshape(())), None
    if isinstance(got, numbers.Real):
        return float(got), None
    return None, f"returned {type_name(got)}; expected a number"


def integer():
    """GOT must be an int (Python or numpy integer) equal to the reference."""

    def compare(got, exp, case=None):
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            return f"returned {type_name(got)}; expected an int (use int(...) on a tensor or float)"
        if int(got) != int(exp):
            return "the count is not right"
        return None

    return compare


def text():
    """GOT must be a str equal to the reference's, ignoring whitespace at the ends. The feedback
    quotes the learner's own text where it first differs, never the expected text."""

    def compare(got, exp, case=None):
        if not isinstance(got, str):
            return f"returned {type_name(got)}; expected a str"
        g, e = got.strip(), str(exp).strip()
        if g == e:
            return None
        i = next((k for k, (a, b) in enumerate(zip(g, e)) if a != b), min(len(g), len(e)))
        where = f"your text there: {g[i:i + 25]!r}" if i < len(g) else "your text ends there"
        return f"the text differs from the expected one from character {i} on ({where})"

    return compare


def sequence(**parts):
    """GOT must be a tuple or list of len(PARTS) items, each checked by its comparator, in order."""
    names = list(parts)

    def compare(got, exp, case=None):
        if not isinstance(got, (tuple, list)):
            return f"returned {type_name(got)}; expected a tuple ({', '.join(names)})"
        if len(got) != len(names):
            return f"returned {len(got)} items; expected {len(names)}: ({', '.join(names)})"
        for (name, cmp), g, e in zip(parts.items(), got, exp):
            problem = cmp(g, e, case)
            if problem:
                return f"{name}: {problem}"
        return None

    return compare


def mapping(keys, value_compare, optional_zero=()):
    """GOT must be a dict with exactly KEYS (plus, optionally, OPTIONAL_ZERO keys equal to 0)."""
    keys = tuple(keys)

    def compare(got, exp, case=None):
        if not isinstance(got, dict):
            return f"returned {type_name(got)}; expected a dict with keys {', '.join(keys)}"
        missing = [k for k in keys if k not in got]
        if missing:
            return f"the dict lacks key(s) {', '.join(map(repr, missing))}"
        extra = [k for k in got if k not in keys and k not in optional_zero]
        if extra:
            return f"the dict has unexpected key(s) {', '.join(map(repr, extra))}"
        for k in optional_zero:
            if k in got and got[k] != 0:
                return f"{k!r} should be 0 here"
        for k in keys:
            problem = value_compare(got[k], exp[k], case)
            if problem:
                return f"{k!r}: {problem}"
        return None

    return compare
