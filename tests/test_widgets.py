import pytest

from labkit import widgets


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


def test_explorer_builds_a_widget(base):
    model, tok = base
    box = widgets.temperature_explorer(model, tok, "Once upon a time", n=1, max_new_tokens=5)
    assert len(box.children) == 3
