import pytest

from labkit import lowrank
from labkit.course import widgets
from test_lowrank import LLAMA_PARAMS, LLAMA_QV, _known_spectrum  # tests/ is on sys.path (conftest)


def test_greedy_samples_agree_and_hot_samples_differ(base):
    model, tok = base
    cold = widgets.sample_continuations(model, tok, "Once upon a time", 0.0, n=3, max_new_tokens=15)
    assert len(cold) == 3 and len(set(cold)) == 1
    hot = widgets.sample_continuations(model, tok, "Once upon a time", 1.5, n=3, max_new_tokens=15)
    assert len(set(hot)) > 1
    assert hot == widgets.sample_continuations(model, tok, "Once upon a time", 1.5, n=3, max_new_tokens=15)


def test_bad_widget_input_is_a_clear_error(base):
    model, tok = base
    with pytest.raises(ValueError, match="prompt"):
        widgets.sample_continuations(model, tok, "", 0.5)
    with pytest.raises(ValueError, match="n must"):
        widgets.sample_continuations(model, tok, "Hi", 0.5, n=0)


def test_explorer_shows_the_continuations_and_redraws_when_a_control_changes(base, capsys):
    """Outside a kernel the Output widget does not capture: what redraw prints reaches stdout."""
    from labkit import models

    model, tok = base
    box = widgets.temperature_explorer(model, tok, "Once upon a time", n=2, max_new_tokens=5)
    text, temp, _ = box.children
    greedy = models.generate(model, tok, "Once upon a time", max_new_tokens=5)

    def shown():  # the continuation lines printed since the last call
        return [ln for ln in capsys.readouterr().out.replace("\x1b[2K", "").splitlines() if ln.startswith("[")]

    assert shown() == [f"[1] Once upon a time{greedy}", f"[2] Once upon a time{greedy}"], "temperature 0: greedy, twice"
    temp.value = 1.5
    hot = widgets.sample_continuations(model, tok, "Once upon a time", 1.5, n=2, max_new_tokens=5)
    assert shown() == [f"[{i + 1}] Once upon a time{s}" for i, s in enumerate(hot)]
    text.value = ""
    assert "prompt is empty" in capsys.readouterr().out, "a bad prompt is said in the widget, not raised"


def test_grpo_widget_trains_on_click_with_the_sliders_values(base, capsys, monkeypatch):
    """No browser: set the sliders, press the button from Python, read what the callback printed."""
    from labkit.lessons import grpo as lesson

    model, tok = base
    prompts = [tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
               for u in ("What is the risk?", "Who paid?")]
    calls = []
    real = lesson.short_run

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lesson, "short_run", spy)
    box = widgets.grpo_widget(model, tok, prompts, lambda p, c: [float(len(x) % 2) for x in c], group_sizes=(2, 4),
                              betas=(0.0, 0.3), group_size=4, beta=0.0, steps=1, batch_size=2, max_new_tokens=4)
    g, b, button, out = box.children
    assert (g.value, b.value) == (4, 0.0) and not calls, "nothing runs until Train"
    g.value, b.value = 2, 0.3
    button.click()
    assert len(calls) == 1 and calls[0]["group_size"] == 2 and calls[0]["beta"] == 0.3 and calls[0]["steps"] == 1
    assert "G=2, beta=0.3, 1 steps" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least one training prompt"):
        widgets.grpo_widget(model, tok, [], lambda p, c: [])




def _stdout_text(out):
    return "".join(o["text"] for o in out.outputs if o["output_type"] == "stream")


def test_rank_widget_builds_and_follows_the_r_slider():
    dw, _ = _known_spectrum()
    box = widgets.rank_widget(dw, LLAMA_PARAMS, LLAMA_QV, max_rank=32)
    assert len(box.children) == 3
    r_slider, alpha_slider, out = box.children
    assert (r_slider.min, r_slider.max, r_slider.value) == (1, 32, 8)
    assert "trainable params: 4,194,304 " in _stdout_text(out)
    assert any("image/png" in o.get("data", {}) for o in out.outputs)

    r_slider.value = 16
    text = _stdout_text(out)
    assert "trainable params: 8,388,608 " in text and "4,194,304" not in text
    assert f"{lowrank.rank_r_error(dw, 16):.4f}" in text
    alpha_slider.value = 64.0
    assert "scaling = alpha/r = 4" in _stdout_text(out)
    assert len(out.outputs) == 2   # replaced on each move, not appended


def test_rank_widget_refuses_a_bad_max_rank():
    dw, _ = _known_spectrum()
    with pytest.raises(ValueError, match="max_rank must be"):
        widgets.rank_widget(dw, LLAMA_PARAMS, LLAMA_QV, max_rank=0)
