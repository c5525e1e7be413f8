"""Lesson 07's readings of the data sweep (labkit.lessons.data): the learning curves and where they bend, the
noise, duplicate, leak, entity-split and distillation cells as printed lines, and the two figures."""

from __future__ import annotations

from .. import dataprep, guard
from ..stats import describe_mcnemar, describe_share, mcnemar, share_interval
from .data import heldout, new_inputs, SMALL_CLEAN, training_rows


# ----------------------------------------------------------------------------- reading it

FAMILIES = {"e": "extract", "c": "classify", "r": "risk", "d": "dti", "q": "qa"}


def by_family(right: str, tasks: str) -> dict:
    """{task: (right, n)} from a verdict string and the matching task letters."""
    out: dict = {}
    for ok, t in zip(right, tasks):
        k, n = out.get(FAMILIES[t], (0, 0))
        out[FAMILIES[t]] = (k + (ok == "1"), n + 1)
    return out


def curve(res: dict, regime: str = "budget") -> dict:
    """{family (and "all"): [(n examples, right, scored)]} of one curve: regime "budget" or "epochs"."""
    guard.one_of("regime", regime, ("budget", "epochs"))
    out: dict = {}
    cells = sorted((c for c in res["cells"].values() if c["kind"] == "curve" and c["name"].startswith(regime)),
                   key=lambda c: c["n"])
    for c in cells:
        fam = by_family(c["right"], res["heldout_tasks"])
        fam["all"] = (c["right"].count("1"), len(c["right"]))
        for task, (k, n) in fam.items():
            out.setdefault(task, []).append((c["n"], k, n))
    return out


def bend(points: list[tuple[int, int, int]]) -> int:
    """Where a curve flattens: the smallest size whose Wilson 95% interval holds the score of every larger
    size (more data than that changed the score by less than the uncertainty of one point)."""

    for i, (n, k, m) in enumerate(points):
        low, high = share_interval(k, m)
        if all(low <= kk / mm <= high for _, kk, mm in points[i + 1:]):
            return n
    return points[-1][0]


def describe_curve(res: dict, regime: str | None = None) -> list[str]:
    """One line per family: its exact match at each size and where it flattens (``bend``). REGIME "budget"
    or "epochs" gives that curve's table; None gives both, each under a title (solid, then dashed)."""
    if regime is None:
        about = res["settings"]
        passes = f"{about['epochs']} pass{'' if about['epochs'] == 1 else 'es'}"
        return ([f"fixed budget, {about['budget']} steps each (solid):"] + describe_curve(res, "budget")
                + [f"{passes} over the data (dashed):"] + describe_curve(res, "epochs"))
    lines = []
    for task, points in curve(res, regime).items():
        at = bend(points)
        cells = "  ".join(f"{k / m:4.0%}" for _, k, m in points)
        last = points[-1][0]
        where = f"no plateau up to {last:,}" if at == last else f"flat from {at:,} ({at // 5 if task != 'all' else at:,} of this family)"
        if task == "all":
            where = f"flat from {at:,}" if at != last else where
        lines.append(f"{task:>9}  {cells}   {where}")
    sizes = "  ".join(f"{n:>4}" for n, _, _ in next(iter(curve(res, regime).values())))
    return [f"{'examples':>9}  {sizes}"] + lines


def curve_figure(res: dict):
    """Held-out exact match against training examples (log scale), one panel per family and one for all,
    at the fixed compute budget (solid, with its Wilson 95% band) and at a fixed number of passes (dashed);
    the dotted line marks where the budget curve flattens (none where it never does). A pyplot figure, closed
    so that ``display`` shows it once."""
    import matplotlib.pyplot as plt

    budget, epochs = curve(res, "budget"), curve(res, "epochs")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4), dpi=80)
    about = res["settings"]
    passes = f"{about['epochs']} pass{'' if about['epochs'] == 1 else 'es'}"
    for i, task in enumerate(list(FAMILIES.values()) + ["all"]):
        ax = axes.flat[i]
        pts = budget[task]
        xs = [n for n, _, _ in pts]
        ci = [share_interval(k, m) for _, k, m in pts]
        ax.fill_between(xs, [100 * lo for lo, _ in ci], [100 * hi for _, hi in ci], color="C0", alpha=0.15, lw=0)
        ax.plot(xs, [100 * k / m for _, k, m in pts], "o-", color="C0", label=f"budget: {about['budget']} steps each")
        ep = epochs.get(task, [])
        ax.plot([n for n, _, _ in ep], [100 * k / m for _, k, m in ep], "s--", color="C1",
                label=f"{passes} over the data")
        if bend(pts) != xs[-1]:
            ax.axvline(bend(pts), color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(n) for n in xs], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_title(f"{task} ({pts[0][2]} held-out)", fontsize=10)
        ax.grid(alpha=0.3)
        if i % 3 == 0:
            ax.set_ylabel("held-out exact match (%)")
        if i >= 3:
            ax.set_xlabel("training examples (all families)")
        if i == 0:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    plt.close(fig)
    return fig


def _share(k: int, n: int) -> str:

    return describe_share(k, n)


def _cell_score(res: dict, name: str) -> tuple[int, int]:
    right = res["cells"][name]["right"]
    return right.count("1"), len(right)


def describe_noise(res: dict) -> list[str]:
    """Exact match with a share of wrong answers, against clean data of the same size and the smaller clean
    set (McNemar on the same held-out rows)."""

    cells = res["cells"]
    noisy = sorted((c for c in cells.values() if c["kind"] == "noise"), key=lambda c: (c["n"], c["rate"]))
    lines = []
    for c in noisy:
        clean = _cell_score(res, f"budget_{c['n']}")
        lines.append(f"{c['n']:>5} examples, {c['rate']:.0%} wrong: {_share(*_cell_score(res, c['name'])):<28}"
                     f" clean: {_share(*clean)}")
    small = SMALL_CLEAN if f"budget_{SMALL_CLEAN}" in cells else min(c["n"] for c in cells.values() if c["kind"] == "curve")
    for c in noisy:
        if f"budget_{c['n']}" in cells:
            same = mcnemar([x == "1" for x in cells[f"budget_{c['n']}"]["right"]], [x == "1" for x in c["right"]])
            lines.append(describe_mcnemar(same, f"{c['n']} clean", f"{c['n']} with {c['rate']:.0%} wrong"))
        if c["n"] > small:
            test = mcnemar([x == "1" for x in cells[f"budget_{small}"]["right"]], [x == "1" for x in c["right"]])
            lines.append(describe_mcnemar(test, f"{small} clean", f"{c['n']} with {c['rate']:.0%} wrong"))
    return lines


def describe_duplicates(res: dict) -> list[str]:
    """The duplicated set against the distinct rows it holds and against as many distinct rows as it has
    (McNemar on the same held-out rows)."""

    cells, d = res["cells"], res["cells"]["duplicates"]
    fewer, same_size = f"budget_{d['n']}", f"budget_{d['rows']}"
    lines = [f"{d['n']} distinct rows: {_share(*_cell_score(res, fewer))}",
             f"the same {d['n']} + {d['copied']} of them repeated to {d['times']} copies each ({d['rows']} rows): "
             f"{_share(*_cell_score(res, 'duplicates'))}"]
    if same_size in cells:
        lines.append(f"{d['rows']} distinct rows: {_share(*_cell_score(res, same_size))}")
    dup = [x == "1" for x in d["right"]]
    for name in (fewer, same_size):
        if name in cells:
            other = [x == "1" for x in cells[name]["right"]]
            lines.append(describe_mcnemar(mcnemar(dup, other), "duplicated", f"{cells[name]['n']} distinct"))
    return lines


def leak_check(res: dict, n: int = 13, threshold: float = 0.5) -> dict:
    """The contamination check on the leak run: the share of each held-out row's word N-grams found in what
    that run trained on (dataprep.ngram_overlap over question and answer), and the rows flagged at
    THRESHOLD. Returns {"overlap": [float], "flagged": [bool], "leaked": [bool]} in held-out order."""
    cell = res["cells"]["leak"]
    held = heldout(len(res["heldout_tasks"]))
    seen = [dataprep.question(r) + "\n" + r["output"] for r in training_rows(cell, held=held)]
    overlap = dataprep.ngram_overlap([dataprep.question(r) + "\n" + r["output"] for r in held], seen, n)
    return {"overlap": overlap, "flagged": [s >= threshold for s in overlap],
            "leaked": [i < cell["leaked"] for i in range(len(held))]}


def describe_leak(res: dict, check: dict) -> list[str]:
    """The leak run's score on every held-out row (what a report would say), on the leaked and the other
    rows, what the n-gram check flags, and the score on the rows it does not flag, next to the same-size
    run without the leak."""
    cell = res["cells"]["leak"]
    right = [x == "1" for x in cell["right"]]
    clean_run = [x == "1" for x in res["cells"][f"budget_{cell['n']}"]["right"]]
    leaked, flagged = check["leaked"], check["flagged"]

    def on(verdicts, keep):
        picked = [v for v, k in zip(verdicts, keep) if k]
        return _share(sum(picked), len(picked)) if picked else "no rows"

    found = sum(f and lk for f, lk in zip(flagged, leaked))
    false = sum(f and not lk for f, lk in zip(flagged, leaked))
    unflagged = [not f for f in flagged]
    return [f"trained on {cell['n']} training rows + {cell['leaked']} held-out rows (the leak)",
            f"reported score, every held-out row:   {on(right, [True] * len(right))}",
            f"  on the {sum(leaked)} leaked rows:            {on(right, leaked)}",
            f"  on the {len(right) - sum(leaked)} other rows:             {on(right, [not x for x in leaked])}",
            f"rows sharing at least one n-gram with training: {sum(x > 0 for x in check['overlap'])}",
            f"n-gram check flags {sum(flagged)} rows: {found} of the {sum(leaked)} leaked, {false} others",
            f"honest score, rows not flagged:       {on(right, unflagged)}",
            f"same rows, the run without the leak:  {on(clean_run, unflagged)}"]


def describe_entity(res: dict) -> list[str]:
    """Random split against entity split: each run's score on its own test rows, per family."""
    lines = []
    for by, label in (("row", "random split (rows shuffled)"), ("entity", "entity split (applicants shuffled)")):
        c = res["cells"][f"entity_{by}"]
        fam = by_family(c["right"], c["tasks"])
        parts = "   ".join(f"{t} {_share(k, n)}" for t, (k, n) in fam.items())
        lines.append(f"{label:<36} {parts}")
    return lines


def distill_report(res: dict) -> dict:
    """What the teacher's labels were worth: {"teacher": {family: (right, n)} on the new inputs,
    "kept": verifier-kept count, "kept_right", "right", "n", "students": {labels: (right, n) held-out},
    "copies": {labels: {family: (copied, teacher wrong)}}} (copied: the student writes the teacher's wrong
    held-out answer exactly)."""
    teacher = res["cells"]["teacher"]
    inputs = new_inputs(len(teacher["answers"]))
    ok = [a == r["output"] for r, a in zip(inputs, teacher["answers"])]
    kept = [dataprep.verify(r, a) for r, a in zip(inputs, teacher["answers"])]
    fam: dict = {}
    for r, good in zip(inputs, ok):
        k, n = fam.get(r["task"], (0, 0))
        fam[r["task"]] = (k + good, n + 1)
    out = {"teacher": fam, "right": sum(ok), "n": len(ok), "kept": sum(kept),
           "kept_right": sum(k and g for k, g in zip(kept, ok)), "students": {}, "copies": {}}
    for labels in ("gold", "teacher", "verified"):
        c = res["cells"][f"distill_{labels}"]
        out["students"][labels] = (c["right"].count("1"), len(c["right"]), c["rows"])
        tasks = [res["heldout_tasks"][i] for i in c["teacher_wrong"]]
        out["copies"][labels] = by_family(c["copies_teacher"], "".join(tasks)) if tasks else {}
    return out


def describe_distill(res: dict) -> list[str]:
    r = distill_report(res)
    fam = "  ".join(f"{t} {k}/{n}" for t, (k, n) in r["teacher"].items())
    lines = [f"teacher's labels on {r['n']} new inputs: {_share(r['right'], r['n'])}   ({fam})",
             f"verifier keeps {r['kept']}: {r['kept_right']} of them right; it drops "
             f"{r['right'] - r['kept_right']} right and {r['n'] - r['right'] - (r['kept'] - r['kept_right'])} wrong labels",
             "students, same inputs and steps, scored on the held-out rows:"]
    for labels, (k, n, rows) in r["students"].items():
        fam = by_family(res["cells"][f"distill_{labels}"]["right"], res["heldout_tasks"])
        parts = "  ".join(f"{t} {kk}/{nn}" for t, (kk, nn) in fam.items())
        lines.append(f"  {labels + ' labels':<16} ({rows:>3} rows): {_share(k, n):<28} ({parts})")
    lines.append("held-out rows the teacher answers wrongly: the student writes the teacher's very answer on")
    for labels, fams in r["copies"].items():
        total = (sum(k for k, _ in fams.values()), sum(n for _, n in fams.values()))
        parts = "  ".join(f"{t} {k}/{n}" for t, (k, n) in fams.items())
        lines.append(f"  {labels + ' labels':<16} {total[0]}/{total[1]}   ({parts})")
    return lines


def describe_dedup(texts: list[str], truth: dict, kept: list[int], pairs: set[tuple[int, int]], n: int = 5) -> list[str]:
    """What each method found of the planted copies (scraped's TRUTH): exact hashing (KEPT: the indices it
    keeps) and MinHash LSH (PAIRS: index pairs it returned), and the pairs MinHash returned that are not
    planted copies, with their true Jaccard similarity of word N-grams."""
    dropped = set(range(len(texts))) - set(kept)
    planted = {kind: {tuple(sorted(p)) for p in ps} for kind, ps in truth.items()}
    lines = []
    for kind, ps in planted.items():
        by_hash = sum(max(p) in dropped for p in ps)
        lines.append(f"{kind} copies planted: {len(ps):>3}   found by exact hashing {by_hash:>3}   by MinHash {len(ps & pairs):>3}")
    other = sorted(pairs - planted["exact"] - planted["near"])

    def jaccard(i, j):
        a, b = dataprep.ngrams(texts[i], n), dataprep.ngrams(texts[j], n)
        return len(a & b) / len(a | b)

    for label, ps in (("found", planted["near"] & pairs), ("missed", planted["near"] - pairs)):
        if ps:
            js = [jaccard(*p) for p in ps]
            lines.append(f"near copies MinHash {label}: true Jaccard of their {n}-grams {min(js):.2f}-{max(js):.2f}")
    extra = f" (true Jaccard {min(jaccard(*p) for p in other):.2f}-{max(jaccard(*p) for p in other):.2f})" if other else ""
    lines.append(f"other pairs MinHash returned: {len(other)}{extra}; exact hashing dropped {len(dropped)} rows in all")
    return lines


def overlap_figure(check: dict, n: int, threshold: float):
    """Histogram of the n-gram overlap of the leaked and the other held-out rows, with the threshold (a pyplot
    figure, closed so that ``display`` shows it once)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8), dpi=80)
    bins = [i / 20 for i in range(21)]
    for leaked, label, colour in ((False, "held-out rows not in training", "C0"), (True, "leaked rows", "C3")):
        values = [s for s, lk in zip(check["overlap"], check["leaked"]) if lk == leaked]
        ax.hist(values, bins=bins, color=colour, alpha=0.7, label=f"{label} ({len(values)})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(xlabel=f"share of the row's word {n}-grams found in the training rows", ylabel="held-out rows")
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig
