"""Widgets of the course. Each callback is a plain function of plain values, tested without a
browser; the widget only wires sliders to it.
"""

from __future__ import annotations


def sample_continuations(model, tok, prompt: str, temperature: float, n: int = 3, max_new_tokens: int = 30,
                         seed: int = 0) -> list[str]:
    """N continuations of PROMPT at TEMPERATURE (0 = greedy, so all N are the same).

    Sample i uses seed + i, so the same slider position always shows the same texts.
    """
    from .models import generate

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
