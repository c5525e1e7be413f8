"""Widgets of the course. Each callback is a plain function of plain values, tested without a
browser; the widget only wires sliders to it.
"""

from __future__ import annotations

from .. import guard, lowrank
from ..lessons import grpo as grpo_lesson
from ..lessons.sft import MASK_TEMPLATES, mask_view
from ..models import generate


def sample_continuations(model, tok, prompt: str, temperature: float, n: int = 3, max_new_tokens: int = 30,
                         seed: int = 0) -> list[str]:
    """N continuations of PROMPT at TEMPERATURE (0 = greedy, so all N are the same).

    Sample i uses seed + i, so the same slider position always shows the same texts.
    """

    if not prompt:
        raise ValueError("prompt is empty: type a few words for the model to continue.")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    return [generate(model, tok, prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i)
            for i in range(n)]


def temperature_explorer(model, tok, prompt: str = "Once upon a time", n: int = 3, max_new_tokens: int = 30):
    """A temperature slider and a prompt box; shows N continuations, updated live."""
    import ipywidgets as w

    text = w.Text(value=prompt, description="prompt", layout=w.Layout(width="60%"))
    temp = w.FloatSlider(value=0.0, min=0.0, max=2.0, step=0.1, description="temperature", continuous_update=False)
    out = w.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            try:
                for i, s in enumerate(sample_continuations(model, tok, text.value, temp.value, n, max_new_tokens)):
                    print(f"[{i + 1}] {text.value}{s}")
            except ValueError as exc:
                print(f"{exc}")

    return wire([text, temp], out, redraw)


def wire(controls: list, out, redraw):
    """Stack CONTROLS above OUT, call REDRAW whenever a control changes (and once now), display it."""
    import ipywidgets as w
    from IPython.display import display

    for control in controls:
        control.observe(redraw, names="value")
    box = w.VBox([*controls, out])
    redraw()
    display(box)
    return box


def example_label(i: int, example: dict) -> str:
    """A short dropdown label for an instruction example: its index, task and first words."""
    words = example["instruction"][:40] + ("..." if len(example["instruction"]) > 40 else "")
    return f"{i}: {example['task']} · {words}"


def token_mask_viewer(tok, examples: list[dict], max_length: int = 256):
    """Pick an instruction example and a template; see each token coloured by whether it is trained on.

    The callback is labkit.lessons.sft.mask_view(tok, example, template), a plain function returning HTML.
    """
    import ipywidgets as w

    if not examples:
        raise ValueError("token_mask_viewer needs at least one example.")
    pick = w.Dropdown(options=[(example_label(i, e), i) for i, e in enumerate(examples)], value=0,
                      description="example", layout=w.Layout(width="70%"))
    template = w.Dropdown(options=list(MASK_TEMPLATES), value=MASK_TEMPLATES[0], description="template",
                          layout=w.Layout(width="70%"))
    out = w.HTML()

    def redraw(*_):
        out.value = mask_view(tok, examples[pick.value], template.value, max_length)

    return wire([pick, template], out, redraw)


def grpo_widget(sft_model, tok, prompts: list[str], reward_fn, group_sizes=(2, 4, 8), betas=(0.0, 0.2, 1.0),
                group_size: int = 8, beta: float = 0.0, steps: int = 4, batch_size: int = 4, lr: float = 1e-4,
                max_new_tokens: int = 16, eval_prompts=None, eval_gold=None):
    """Group size and KL coefficient sliders and a Train button: a short GRPO run and its curves.

    The callback is labkit.lessons.grpo.short_run (a plain function of plain values); the plot is
    labkit.lessons.grpo.plot_grpo and the line under it labkit.lessons.grpo.describe_run. Nothing runs until Train.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    if not prompts:
        raise ValueError("grpo_widget needs at least one training prompt.")
    g = w.SelectionSlider(options=sorted(group_sizes), value=min(group_sizes, key=lambda x: abs(x - group_size)),
                          description="group size", continuous_update=False)
    b = w.SelectionSlider(options=sorted(betas), value=min(betas, key=lambda x: abs(x - beta)),
                          description="KL beta", continuous_update=False)
    button = w.Button(description=f"train {steps} steps")
    out = w.Output()

    def train(*_):
        with out:
            out.clear_output(wait=True)
            r = grpo_lesson.short_run(sft_model, tok, prompts, reward_fn, group_size=g.value, beta=b.value, steps=steps,
                          batch_size=batch_size, lr=lr, max_new_tokens=max_new_tokens, eval_prompts=eval_prompts,
                          eval_gold=eval_gold)
            grpo_lesson.plot_grpo({f"G={g.value}, beta={b.value:g}": r["log"]})
            plt.tight_layout()
            plt.show()
            print(grpo_lesson.describe_run(r))

    button.on_click(train)
    box = w.VBox([g, b, button, out])
    display(box)
    return box


def _error_plot_png(ranks: list[int], errors: list[float], r: int) -> bytes:
    # matplotlib.figure.Figure, not pyplot: the figure lives in no global registry, so redrawing on
    # every slider move accumulates nothing and needs no plt.close().
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=80)
    ax = fig.add_subplot()
    ax.plot(ranks, errors, "-", color="tab:blue")
    rr = min(r, len(errors))
    ax.plot([ranks[rr - 1]], [errors[rr - 1]], "o", color="tab:red")
    ax.axvline(r, color="tab:red", lw=0.8, ls="--")
    ax.set(xlabel="rank r", ylabel="relative Frobenius error", ylim=(0, 1.02), title=f"best rank-r error (r = {r})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def rank_widget(delta_w, n_model_params: int, layer_shapes, max_rank: int = 64):
    """Sliders for r (1..MAX_RANK) and alpha; shows labkit.lowrank.rank_report as text and the
    error-vs-rank curve (lesson 01). DELTA_W: a 2-D weight update; the other arguments as rank_report's.

    Displays the widget and returns the VBox (call it with a trailing `;` in a notebook cell).
    """
    import base64

    import ipywidgets as w

    max_rank = guard.positive_int("max_rank", max_rank, "64", about="the largest rank on the slider")
    s = lowrank.singular_values(delta_w)   # one SVD for the whole session
    ranks = list(range(1, max_rank + 1))
    errors = lowrank.error_curve(delta_w, ranks, s=s)

    r0 = min(8, max_rank)
    r_slider = w.IntSlider(value=r0, min=1, max=max_rank, step=1, description="r", continuous_update=False)
    alpha_slider = w.FloatSlider(value=float(2 * r0), min=1.0, max=float(4 * max_rank), step=1.0,
                                 description="alpha", continuous_update=False)
    out = w.Output()

    def redraw(*_):
        # Replace out.outputs directly (not `with out: print(...)`): works the same in a kernel and in
        # a test, where no front end captures prints.
        try:
            rep = lowrank.rank_report(delta_w, r_slider.value, alpha_slider.value, n_model_params, layer_shapes, s=s)
        except ValueError as exc:
            out.outputs = ({"output_type": "stream", "name": "stdout", "text": f"{exc}\n"},)
            return
        png = base64.b64encode(_error_plot_png(ranks, errors, rep["r"])).decode("ascii")
        out.outputs = (
            {"output_type": "stream", "name": "stdout", "text": lowrank.format_report(rep, n_model_params)},
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": png, "text/plain": f"<error curve, r = {rep['r']}>"}},
        )

    return wire([r_slider, alpha_slider], out, redraw)
