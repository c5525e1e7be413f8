"""labkit.rewards: the verifiable rewards of lesson 11 and the questions they score."""

import pytest
import torch

from labkit import chat, data, rewards


def test_exact_reward_pays_only_the_exact_answer():
    gold = ["$1,234"] * 6
    got = rewards.exact_reward(None, ["$1,234", " $1,234\n", "$1,235", "$1234", "The total is $1,234.", ""], gold)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert rewards.exact_reward(None, ["Risk: low", "Risk: high"], ["Risk: low", "Risk: low"]) == [1.0, 0.0]


def test_format_reward_pays_the_shape_whatever_the_value():
    got = rewards.format_reward(None, ["$0", "$12,345", "$1234,5", "The total is $22.", "22"], ["$22"] * 5)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0]
    got = rewards.format_reward(None, ["Risk: high", "Risk: medium", "Risk: bad", "high"], ["Risk: low"] * 4)
    assert got == [1.0, 1.0, 0.0, 0.0]
    # the hack: every answer the same rating earns the format reward in full, the exact one only sometimes
    gold = ["Risk: low", "Risk: high", "Risk: medium"]
    same = ["Risk: medium"] * 3
    assert sum(rewards.format_reward(None, same, gold)) == 3 and sum(rewards.exact_reward(None, same, gold)) == 1


def test_rewards_reject_mismatched_gold():
    for reward in (rewards.exact_reward, rewards.format_reward):
        with pytest.raises(ValueError, match="one gold answer per completion"):
            reward(None, ["$1", "$2"], ["$1"])
        with pytest.raises(ValueError, match="a string"):
            reward(None, ["$1"], "$1")
    with pytest.raises(ValueError, match="no known answer format"):
        rewards.format_reward(None, ["yes"], ["yes"])


def test_with_gold_looks_up_each_prompts_gold_answer():
    fn = rewards.with_gold(rewards.exact_reward, {"p": "$1", "q": "$2"})
    assert fn(["p", "p", "q", "q"], ["$1", "$2", "$1", "$2"]) == [1.0, 0.0, 0.0, 1.0]
    assert fn.__name__ == "exact_reward"
    with pytest.raises(KeyError):
        fn(["unknown"], ["$1"])


def test_make_task_is_deterministic_distinct_and_in_the_instruction_format():
    for task, question in rewards.TASKS.items():
        rows = rewards.make_task(task, 20, seed=3)
        assert rows == rewards.make_task(task, 20, seed=3) and rows != rewards.make_task(task, 20, seed=4)
        assert len(rewards.keys(rows)) == 20
        assert {r["instruction"] for r in rows} == {question}
        assert set(rows[0]) >= {"task", "instruction", "input", "output"}
        assert all(rewards.format_reward(None, [r["output"]], [r["output"]]) == [1.0] for r in rows)
    first = rewards.make_task("total", 5, seed=3)
    rest = rewards.make_task("total", 5, seed=3, exclude=rewards.keys(first[:2]))
    assert not rewards.keys(rest) & rewards.keys(first[:2])


def test_make_task_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown task 'dti'"):
        rewards.make_task("dti", 3, seed=0)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            rewards.make_task("total", n, seed=0)


def test_the_heldout_split_shares_no_question_with_rl_training_nor_with_sft_data():
    known = rewards.sft_keys()
    assert len(known) > 1000
    a, b = rewards.split("total", 30, 10), rewards.split("total", 50, 10)
    assert a["heldout"] == b["heldout"], "the held-out set does not depend on N_TRAIN"
    assert len(a["train"]) == 30 and len(a["heldout"]) == 10
    held, train = rewards.keys(a["heldout"]), rewards.keys(a["train"])
    assert not held & train and not held & known and not train & known
    # SFT's data asks the same question (on other receipts): the held-out set tests new inputs, not new questions
    sft_rows = data.read_jsonl("instructions_train.jsonl")
    assert any(r["instruction"] == rewards.TASKS["total"] for r in sft_rows)


def test_stray_special_finds_a_template_marker_that_is_not_a_stop(base):
    _, tok = base
    stops = chat.stop_strings(tok)
    others = [s for s in tok.all_special_tokens if s not in stops]
    assert others, "the bundled template has markers other than its stops"
    assert rewards.stray_special(tok, "$22" + others[0])
    assert not rewards.stray_special(tok, "$22")
    assert not rewards.stray_special(tok, "$22" + stops[0]), "a stop string is where an answer ends, not stray"
    # an answer that runs past a marker earns no exact reward even when it starts right
    assert rewards.exact_reward(None, ["$22" + others[0]], ["$22"]) == [0.0]


def test_contains_reward_is_paid_by_a_list_of_amounts():
    gold = ["$22"] * 4
    got = rewards.contains_reward(None, ["$22", "The total is $22.", "$18 $4 $22", "$4"], gold)
    assert got == [1.0, 1.0, 1.0, 0.0], "the list of every amount is paid in full: the reward can be gamed"
    assert rewards.exact_reward(None, ["$18 $4 $22"], ["$22"]) == [0.0]
    with pytest.raises(ValueError, match="one gold answer per completion"):
        rewards.contains_reward(None, ["$1"], [])


def test_stop_at_special_tokens_ends_answers_at_any_marker_and_the_greedy_text_is_cut_there(base):
    import copy

    from labkit import evaluate

    lm, tok = base
    model = rewards.stop_at_special_tokens(copy.deepcopy(lm), tok)
    have = chat.stop_token_ids(tok, lm)
    ids = chat.stop_token_ids(tok, model)
    assert ids[:len(have)] == have and set(tok.all_special_ids) <= set(ids), "the old stops first, then every marker"
    assert chat.stop_token_ids(tok, lm) == have, "only the model given changes"
    # a prompt whose greedy answer is a marker at once: the answer is cut there, the marker is not in the text
    others = [s for s in tok.all_special_tokens if s not in chat.stop_strings(tok)]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    marker = tok.convert_tokens_to_ids(others[0])
    with torch.no_grad():
        model.lm_head.bias = torch.nn.Parameter(torch.full((model.lm_head.out_features,), -1e4))
        model.lm_head.bias[marker] = 1e4
    assert evaluate.answer(model, tok, [prompt], max_new_tokens=4) == [""]
