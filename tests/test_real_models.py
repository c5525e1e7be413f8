"""Conformance: labkit treats a Hub chat model the way its own chat template says, not the way the bundled
model happens to work.

Each test runs on every locally built Hub-style model of tests/hub_models.py (random weights, real
8k+ BPE tokenizers): a Llama with SmolLM2's ChatML template (default system turn, no BOS), a GPT-2
(Conv1D layers, no pad token, plain-text role markers, EOS as the turn end) and a Gemma-style model
(<start_of_turn>/<end_of_turn>, no system role, a BOS that both the template and the tokenizer add).
With random weights every score is 0%: these tests check behaviour (templates, labels, stop tokens),
not quality. The bundled model runs the same checks.
"""

import copy

import pytest
import torch

from labkit import chat, data, evaluate, preference, rag, sft
from labkit.sft import IGNORE_INDEX

EXAMPLES = data.read_jsonl("instructions_eval.jsonl")[:10]
# what a reader of each template sees after an answer: its turn end
TURN_END = {"bundled": "<|end|>", "llama-chatml": "<|im_end|>", "gpt2": "<|endoftext|>", "gemma-style": "<end_of_turn>"}


@pytest.fixture(scope="module", params=["bundled", "llama-chatml", "gpt2", "gemma-style"])
def model(request, hub_models):
    from labkit import models

    kind = request.param
    lm, tok = models.load_base(None if kind == "bundled" else hub_models[kind], device="cpu")
    return kind, lm, tok


def test_prompt_plus_completion_is_the_templates_own_rendering(model):
    kind, _, tok = model
    for ex in EXAMPLES:
        pair = data.to_prompt_completion(ex, tok)
        whole = tok.apply_chat_template(data.to_messages(ex), tokenize=False)
        rendered_prompt = tok.apply_chat_template(data.to_messages(ex)[:1], tokenize=False, add_generation_prompt=True)
        assert pair["prompt"] == rendered_prompt
        assert whole.startswith(pair["prompt"] + pair["completion"])
        assert whole[len(pair["prompt"] + pair["completion"]):].strip() == "", "only whitespace after the turn end"
        assert pair["completion"].endswith(TURN_END[kind])
        assert ex["output"] in pair["completion"]


def test_no_bundled_convention_leaks_into_another_model(model):
    kind, _, tok = model
    if kind == "bundled":
        pytest.skip("the bundled model's own conventions are its own")
    pair = data.to_prompt_completion(EXAMPLES[0], tok)
    for marker in ("<|end|>", "<|assistant|>", "<|user|>"):
        assert marker not in pair["prompt"] + pair["completion"]
    pref = preference.pair_texts({"prompt": "Q?", "chosen": "yes", "rejected": "no"}, tok)
    assert pref["chosen"] == chat.completion(tok, "yes") and pref["rejected"] == chat.completion(tok, "no")
    assert rag.sft_pair(tok, "Q?", "yes") == chat.prompt_completion(tok, "Q?", "yes")


def test_trained_tokens_are_the_answer_and_the_turn_end(model):
    kind, _, tok = model
    for ex in EXAMPLES:
        pair = data.to_prompt_completion(ex, tok)
        f = sft.tokenize_example(tok, pair["prompt"], pair["completion"])
        trained = [i for i, lab in zip(f["input_ids"], f["labels"]) if lab != IGNORE_INDEX]
        prompt_ids = f["input_ids"][:f["prompt_length"]]
        assert prompt_ids == chat.encode(tok, pair["prompt"]), "the prompt's tokens are a prefix: nothing merges"
        text = tok.decode(trained, skip_special_tokens=False)
        # trl appends the tokenizer's EOS to a completion that does not end with it; so does labkit
        expected = pair["completion"] + ("" if pair["completion"].endswith(tok.eos_token) else tok.eos_token)
        assert text == expected
        assert chat.clean(tok, text) == ex["output"]


def test_bos_appears_once_where_the_tokenizer_has_one(model):
    kind, _, tok = model
    pair = data.to_prompt_completion(EXAMPLES[0], tok)
    ids = sft.tokenize_example(tok, pair["prompt"], pair["completion"])["input_ids"]
    if tok.bos_token_id is None:
        assert kind == "llama-chatml"
    else:
        assert ids.count(tok.bos_token_id) <= 1 + (tok.bos_token_id == tok.eos_token_id)
        assert ids[1] != tok.bos_token_id
    if kind == "gemma-style":  # the template writes <bos> and the tokenizer would add another
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
        assert tok(pair["prompt"])["input_ids"][:2] == [tok.bos_token_id] * 2, "the trap is real"


def test_labels_equal_trls_sfttrainer(model):
    kind, lm, tok = model
    from labkit import adapters

    pairs = [data.to_prompt_completion(ex, tok) for ex in EXAMPLES[:4]]
    trainer = sft.sft_trainer(adapters.add(copy.deepcopy(lm), "lora", seed=0, r=2, alpha=4), tok, pairs, steps=1,
                              batch_size=2)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    ours = sft.PadCollator(tok.pad_token_id)(sft.tokenize_all(tok, pairs))
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(theirs[key], ours[key]), key


def test_stop_tokens_come_from_the_template_and_the_generation_config(model):
    kind, lm, tok = model
    stops = chat.stop_token_ids(tok, lm)
    assert stops[0] == tok.convert_tokens_to_ids(TURN_END[kind]), "the turn end stops generation"
    assert tok.eos_token_id in stops
    gen = lm.generation_config.eos_token_id
    for i in gen if isinstance(gen, list) else [gen]:
        assert i in stops


def test_generation_stops_at_the_turn_end_after_sft(model):
    """Teach the model one answer (full fine-tune, a few seconds) and check that evaluate.answer stops at the
    template's turn end and returns the bare answer."""
    from labkit.train import fit

    kind, lm, tok = model
    m = copy.deepcopy(lm).train()
    ex = EXAMPLES[2]  # a risk question: short prompt, short answer
    assert ex["task"] == "risk"
    pair = data.to_prompt_completion(ex, tok)
    batch = sft.PadCollator(tok.pad_token_id)([sft.tokenize_example(tok, pair["prompt"], pair["completion"])])
    torch.manual_seed(0)
    params = [p for p in m.parameters() if p.requires_grad]
    # 60 steps at a modest rate: at 1e-2 for 30 steps the small GPT-2 fixture can stop one token short
    # ("Risk:"), an oscillation, not a template bug
    lr = 1e-3 if kind == "bundled" else 3e-3
    fit(m, iter(lambda: batch, None), torch.optim.AdamW(params, lr=lr), params, 60)
    got = evaluate.answer(m, tok, [pair["prompt"]], max_new_tokens=20)
    assert got == [ex["output"]]
    enc = torch.tensor([chat.encode(tok, pair["prompt"])])
    out = m.generate(enc, attention_mask=torch.ones_like(enc), max_new_tokens=20, do_sample=False,
                     eos_token_id=chat.stop_token_ids(tok, m), pad_token_id=tok.pad_token_id)
    new = out[0, enc.shape[1]:].tolist()
    assert new[-1] == tok.convert_tokens_to_ids(TURN_END[kind]), "stopped on the turn end, not on max_new_tokens"


def test_plain_generation_works_without_a_bos_token(model):
    from labkit import models

    kind, lm, tok = model
    text = models.generate(lm, tok, "Once upon a time", max_new_tokens=5)
    # the same continuation by hand: BOS only where the tokenizer has one, then 5 argmax steps
    ids = ([tok.bos_token_id] if tok.bos_token is not None else []) + tok("Once upon a time", add_special_tokens=False)["input_ids"]
    assert ids, "a prompt with no BOS in front still has its own tokens"
    start = len(ids)
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(lm(torch.tensor([ids])).logits[0, -1].argmax()))
    assert text == tok.decode(ids[start:], skip_special_tokens=True) and text.strip(), (kind, text)


def test_a_template_that_cannot_be_split_names_the_model():
    from labkit import models

    tok = models.load_tokenizer()
    tok = copy_with_template(tok, "{% for m in messages %}{{ m['content'] }}{% endfor %}"
                                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(chat.TemplateError, match="base_model"):
        chat.prompt_completion(tok, "Q?", "yes")


def test_a_template_that_refuses_a_system_turn_is_a_clear_error(hub_models):
    from labkit import models

    tok = models.load_tokenizer(hub_models["gemma-style"])
    with pytest.raises(chat.TemplateError, match="roles"):
        chat.prompt_completion(tok, "Q?", "yes", system="Be brief.")


def copy_with_template(tok, template):
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    return tok
