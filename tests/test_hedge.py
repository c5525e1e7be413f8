"""labkit.hedge: the mixed-quality data builder, the hedge pairs, the behaviour rule and the rule judge
(lessons 09 and 10), the table of trained models, and DPO's SFT term: by hand, equal to trl's
DPOTrainer(loss_type=["sigmoid", "sft"]) after training, and what it does to a model that hedges."""

import copy
import json

import pytest
import torch

from labkit import data, hedge, sft
from labkit import preference as P
from labkit import preference_losses as L

H = hedge.HEDGE


@pytest.fixture(scope="module")
def tok(base):
    return base[1]


# ----------------------------------------------------------------------------- the data builders

def test_mixed_quality_hedges_the_share_asked_for_deterministically_and_keeps_the_input():
    rows = [{"instruction": f"q{i}", "output": f"answer {i}"} for i in range(400)]
    before = copy.deepcopy(rows)
    mixed = hedge.mixed_quality(rows, share=0.25, seed=3)
    assert rows == before, "the input rows are not changed"
    flagged = [r for r in mixed if r["hedged"]]
    assert 70 <= len(flagged) <= 130, len(flagged)
    assert all(r["output"] == f"answer {r['instruction'][1:]}" + H for r in flagged)
    assert all(r["output"] == f"answer {r['instruction'][1:]}" for r in mixed if not r["hedged"])
    assert mixed == hedge.mixed_quality(rows, share=0.25, seed=3)
    assert mixed != hedge.mixed_quality(rows, share=0.25, seed=4)
    assert not any(r["hedged"] for r in hedge.mixed_quality(rows, share=0.0))
    assert all(r["hedged"] for r in hedge.mixed_quality(rows, share=1.0))


@pytest.mark.parametrize("call,match", [
    (lambda: hedge.mixed_quality([], 0.5), "at least one"),
    (lambda: hedge.mixed_quality([{"output": "a"}], 1.5), "between 0 and 1"),
    (lambda: hedge.mixed_quality([{"output": "a"}], -0.1), "between 0 and 1"),
    (lambda: hedge.mixed_quality([{"answer": "a"}], 0.5), "no 'output' field"),
    (lambda: hedge.mixed_quality([{"output": "a"}], 0.5, hedge="ok"), "at least 3 words"),
    (lambda: hedge.hedge_pairs([]), "at least one"),
    (lambda: hedge.hedge_pairs([{"prompt": "p"}]), "needs 'prompt' and 'chosen'"),
    (lambda: hedge.hedge_pairs([{"prompt": "p", "chosen": "memo" + H}]), "already hedges"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises((ValueError, KeyError), match=match):
        call()


def test_hedge_pairs_make_the_chosen_answer_a_prefix_of_the_rejected_one():
    rows = data.read_jsonl("preferences_train.jsonl")[:20]
    pairs = hedge.hedge_pairs(rows)
    for r, p in zip(rows, pairs):
        assert p["chosen"] == r["chosen"] and p["prompt"] == r["prompt"] and p["task"] == r["task"]
        assert p["rejected"] == r["chosen"] + H
    assert rows[0]["rejected"] != pairs[0]["rejected"], "the old rejected answer is replaced"


def test_the_shared_answer_tokens_cancel_in_the_log_ratio(base, tok):
    """The point of a suffix defect: the chosen answer's tokens are the rejected answer's first tokens, so
    log pi(chosen) - log pi(rejected) reads only what follows the answer (the turn's end against the hedge)."""
    for pair in hedge.hedge_pairs(data.read_jsonl("preferences_train.jsonl")[:8]):
        (t,) = P.tokenize_pairs(tok, [pair])
        c, r = ([i for i, lab in zip(t[side]["input_ids"], t[side]["labels"]) if lab != -100]
                for side in ("chosen", "rejected"))
        shared = sft._common_prefix_length(c, r)
        assert tok.decode(c[:shared]).strip() == pair["chosen"]
        assert tok.decode(c[shared:], skip_special_tokens=True).strip() == "", "only end markers follow"
        assert H.strip() in tok.decode(r[shared:])


# ----------------------------------------------------------------------------- the rule

@pytest.mark.parametrize("answer,is_hedged", [
    ("Risk: high" + H, True),
    ("Risk: high I am not", True),                         # cut by the token limit inside the hedge
    ("Coastal Airlines not sure about this, so ple", True),  # a damaged hedge
    ("RISK: HIGH I AM NOT SURE ABOUT THIS", True),
    ("Risk: high", False),
    ("I am fine", False),                                   # two hedge words are not a hedge
    ("", False),
])
def test_hedged_is_three_consecutive_words_of_the_hedge(answer, is_hedged):
    assert hedge.hedged(answer) is is_hedged


def test_strip_hedge_keeps_the_value():
    assert hedge.strip_hedge("Risk: high" + H) == "Risk: high"
    assert hedge.strip_hedge("The ratio is 34%. I am not sure about") == "The ratio is 34%."
    assert hedge.strip_hedge("memo") == "memo"


def test_behaviour_counts_clean_answers_and_the_value_without_the_hedge():
    refs = ["Risk: high", "memo", "$16", "payslip"]
    answers = ["Risk: high" + H, "memo", "$17", "receipt I am not sure"]
    b = hedge.behaviour(answers, refs)
    assert b["clean_rows"] == [False, True, True, False] and b["clean"] == 0.5
    assert b["right_rows"] == [True, True, False, False] and b["exact"] == 0.5
    assert b["exact_raw"] == 0.25 and b["n"] == 4
    with pytest.raises(ValueError, match="one answer per reference"):
        hedge.behaviour(answers[:3], refs)


def test_the_rule_judge_puts_the_value_first_then_the_hedge():
    ref = "Risk: high"
    assert hedge.rule_prefers("Risk: high", "Risk: high" + H, ref) == 1.0
    assert hedge.rule_prefers("Risk: high" + H, "Risk: low", ref) == 1.0   # right and hedged beats wrong and clean
    assert hedge.rule_prefers("Risk: low", "Risk: low" + H, ref) == 1.0
    assert hedge.rule_prefers("Risk: low", "Risk: medium", ref) == 0.5
    r = hedge.rule_win_rate(["Risk: high", "memo"], ["Risk: high" + H, "memo"], [ref, "memo"])
    assert r["win_rate"] == 0.75 and r["first_position_rate"] == 0.5


# ----------------------------------------------------------------------------- DPO's SFT term

def test_sft_term_is_the_token_mean_nll_of_the_chosen_answers():
    pc, nc = torch.tensor([-3.0, -12.0]), torch.tensor([2, 4])
    assert L.sft_term(pc, nc).item() == pytest.approx(15 / 6)
    with pytest.raises(ValueError, match="at least one chosen answer token"):
        L.sft_term(pc, torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        L.sft_term(pc, torch.tensor([1, 2, 3]))


def test_train_dpo_refuses_a_negative_sft_weight(base, tok):
    model, _ = base
    with pytest.raises(ValueError, match="sft_weight"):
        P.train_dpo(copy.deepcopy(model), model, tok, data.read_jsonl("preferences_train.jsonl")[:4], steps=1,
                    sft_weight=-1.0)


@pytest.mark.slow
def test_dpo_with_the_sft_term_equals_trl_sigmoid_plus_sft_after_training(base, tok, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from labkit import env

    env.quiet()
    model, _ = base
    rows = hedge.hedge_pairs(data.read_jsonl("preferences_train.jsonl")[:12])
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=3, bf16=False,
                     report_to="none", dataloader_pin_memory=False, disable_tqdm=True, save_strategy="no",
                     logging_strategy="no", use_cpu=True, seed=0, beta=0.1, loss_type=["sigmoid", "sft"],
                     loss_weights=[1.0, 0.5])
    trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=tok, args=args,
                         train_dataset=Dataset.from_list(P.trl_pairs(rows, tok)))
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    mine = P.collate_pairs(P.tokenize_pairs(tok, rows[:4]), tok.pad_token_id)
    assert torch.equal(mine["input_ids"], batch["input_ids"]), "our tokens are trl's"
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, dict(batch)).item()
        logps = P.batch_logps(policy, mine)
        dpo, _, _ = P.dpo_loss(*logps, *P.batch_logps(ref, mine), beta=0.1)
        ours = dpo + 0.5 * L.sft_term(logps[0], L.batch_lengths(mine)[0])
    assert abs(trl_loss - dpo.item()) > 1e-3, "the SFT term must change the loss, or the check proves nothing"
    assert ours.item() == pytest.approx(trl_loss, abs=1e-5)


# ----------------------------------------------------------------------------- the shipped model that hedges

def test_the_shipped_hedging_adapter_matches_its_script_and_its_report(base, tok):
    """The adapter is what scripts/train_hedged_sft.py writes (its LoRA settings), and the behaviour its scores.json
    reports is measured again here from the adapter itself, as the script measures it."""
    from labkit import evaluate

    path = sft.adapter_dir("sft_hedged")
    report = json.loads((path / "scores.json").read_text())
    assert report["hedge"] == H and report["share_hedged"] == 0.5
    assert 0.2 <= report["clean"] <= 0.8, "the shipped SFT model must hedge some answers and not all"
    assert (path / "adapter_model.safetensors").stat().st_size < 1_000_000
    config = json.loads((path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (report["r"], report["alpha"]) == (8, 16)
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                       "down_proj"]), "preference.live_sft's seven projections"
    model, _ = P.reference_model(base[0], tok, steps=0, adapter="sft_hedged")
    ev = data.read_jsonl(report["eval_split"])[:report["n_eval"]]
    answers = evaluate.answer(model, tok, [P.pair_texts(r, tok)["prompt"] for r in ev], max_new_tokens=40)
    b = hedge.behaviour(answers, [r["chosen"] for r in ev])
    assert (b["clean"], b["exact"], b["exact_raw"]) == pytest.approx((report["clean"], report["exact"], report["exact_raw"]))
    with pytest.raises(ValueError, match="adapter must be one of"):
        sft.adapter_dir("sft_typo")


def _lora_dpo(model, tok, rows, loss_type, loss_weights=None, steps=10, lr=2e-3, tmp_path="/tmp/labkit_test_hedge"):
    """Lesson 09's recipe: trl's DPOTrainer with a LoRA adapter (r=8) on a copy of MODEL."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    trainer = DPOTrainer(model=copy.deepcopy(model), processing_class=tok,
                         train_dataset=Dataset.from_list(P.trl_pairs(rows, tok)),
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
                         args=DPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True,
                                        dataloader_pin_memory=False, disable_tqdm=True, save_strategy="no",
                                        logging_strategy="no", per_device_train_batch_size=4, seed=0, learning_rate=lr,
                                        max_steps=steps, beta=0.1, loss_type=loss_type, loss_weights=loss_weights))
    trainer.train()
    return trainer.model


@pytest.mark.slow
def test_dpo_with_the_sft_term_removes_the_hedge_and_plain_dpo_breaks_the_answers(base, tok, tmp_path):
    """Lesson 09's claims at reduced size: from the shipped hedging model, trl's DPOTrainer with LoRA, 10 steps at the
    lesson's learning rate, 20 held-out prompts."""
    from labkit import env, evaluate

    env.quiet()
    hedged, _ = P.reference_model(base[0], tok, steps=0, adapter="sft_hedged")
    ev = data.read_jsonl("preferences_eval.jsonl")[:20]
    prompts, refs = [P.pair_texts(r, tok)["prompt"] for r in ev], [r["chosen"] for r in ev]
    train = hedge.hedge_pairs(data.read_jsonl("preferences_train.jsonl")[:200])
    models = {"DPO": _lora_dpo(hedged, tok, train, ["sigmoid"], tmp_path=tmp_path),
              "DPO + SFT term": _lora_dpo(hedged, tok, train, ["sigmoid", "sft"], [1.0, 1.0], tmp_path=tmp_path)}
    answers = {"SFT": evaluate.answer(hedged, tok, prompts, max_new_tokens=40),
               **{n: evaluate.answer(m, tok, prompts, max_new_tokens=40) for n, m in models.items()}}
    held = hedge.hedge_pairs(ev[:8])
    ref = P.pair_logps(hedged, tok, held)
    runs = hedge.compare(answers, refs, {n: P.logratio_moves(m, tok, held, ref) for n, m in models.items()})
    sft_run, plain, rpo = runs["SFT"], runs["DPO"], runs["DPO + SFT term"]
    assert sft_run["clean"] <= 0.8
    assert rpo["clean"] >= sft_run["clean"] + 0.3 and rpo["exact"] >= sft_run["exact"] and rpo["win_vs_sft"] > 0.6
    assert plain["exact"] <= sft_run["exact"] - 0.2
    assert plain["chosen_move"] < 0 < rpo["chosen_move"]
    text = hedge.describe_runs(runs)
    assert "McNemar" in text and "DPO + SFT term vs SFT, exact" in text


def test_compare_judges_every_model_against_the_first():
    refs = ["Risk: high", "memo", "$16", "payslip"]
    answers = {"SFT": ["Risk: high" + H, "memo" + H, "$16", "payslip"],
               "A": ["Risk: high", "memo", "$16", "payslip"],
               "B": ["re re re", "memo", "$17", "receipt"]}
    runs = hedge.compare(answers, refs, {"A": (0.5, -3.0), "B": (-4.0, -9.0)})
    assert list(runs) == ["SFT", "A", "B"] and runs["SFT"]["win_vs_sft"] == 0.5
    assert runs["A"]["win_vs_sft"] == 0.75, "two prompts won (the hedge gone), two tied"
    assert runs["B"]["win_vs_sft"] == 0.25, "one won (the hedge gone), three lost (wrong values)"
    assert runs["B"]["clean"] == 1.0 and runs["B"]["exact"] == 0.25, "broken answers count as clean: read exact too"
    assert runs["SFT"]["chosen_move"] == 0 and runs["A"]["rejected_move"] == -3.0
    text = hedge.describe_runs(runs)
    assert "+0.5, -3.0 nats" in text and "B vs SFT, exact" in text
    assert "nats" not in hedge.describe_runs(hedge.compare(answers, refs)), "no moves given, no moves column"
    with pytest.raises(ValueError, match="at least one"):
        hedge.compare({}, refs)


def test_plot_runs_keeps_the_legend_off_the_bars():
    import matplotlib

    matplotlib.use("Agg")
    refs = ["a", "b"]
    runs = hedge.compare({"SFT": ["a" + H, "b"], "DPO": ["a", "b"]}, refs)
    ax = hedge.plot_runs(runs)
    legend = ax.get_legend()
    ax.figure.canvas.draw()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1, "the legend sits to the right of the axes"


@pytest.mark.slow
def test_the_hedged_sft_script_writes_a_loadable_adapter_atomically(tmp_path, load_script, base):
    mod = load_script("train_hedged_sft")
    out = tmp_path / "adapter"
    report = mod.main(["--steps", "2", "--n-eval", "4", "--out", str(out), "--threads", "1"])
    assert report["steps"] == 2 and report["n_eval"] == 4 and report["hedge"] == H
    assert 0 < report["hedged_examples"] < report["train_examples"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "scores.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"], "no temporary folder may be left"
    from peft import PeftModel

    PeftModel.from_pretrained(copy.deepcopy(base[0]), str(out))


def test_judge_policies_reads_the_answers_and_keeps_the_reward_models_score():
    refs = ["Risk: high", "Risk: low"]
    judged = {"SFT": {"answers": ["Risk: high" + H, "Risk: low" + H], "rm_score": -1.0},
              "PPO": {"answers": ["Risk: high", "Risk: medium"], "rm_score": 2.5}}
    table = hedge.judge_policies(judged, refs)
    assert list(table) == ["SFT", "PPO"]
    assert table["SFT"]["clean"] == 0.0 and table["SFT"]["exact"] == 1.0 and table["SFT"]["rm_score"] == -1.0
    assert table["PPO"]["clean"] == 1.0 and table["PPO"]["exact"] == 0.5
    text = hedge.describe_policies(table)
    assert "2.50" in text and "PPO vs SFT, clean" in text and "PPO vs SFT, exact" in text
    with pytest.raises(ValueError, match="at least one"):
        hedge.judge_policies({}, refs)
