"""Vocabulary and tasks: encoding, prompts from seeds, and every reward component on hand examples."""

import pytest
import torch

from rlref.lab import (
    EOS_ID,
    MAX_DIFFICULTY,
    PAD_ID,
    TASK_NAMES,
    TOKENS,
    VOCAB_SIZE,
    decode,
    encode,
    make_task,
    response_content,
    score_responses,
)


def test_vocabulary_round_trip():
    assert VOCAB_SIZE == len(TOKENS) == 20
    text = "<bos>A17+25=042<eos>"
    assert decode(encode(text)) == text
    assert encode("<bos>C 3 1 =") == encode("<bos>C31=")
    assert decode(encode("<pad>1")) == "1"
    with pytest.raises(ValueError, match="vocabulary"):
        encode("x")
    with pytest.raises(ValueError, match="special"):
        encode("<cls>")
    with pytest.raises(ValueError, match="outside"):
        decode([VOCAB_SIZE])


def test_content_stops_at_eos_and_drops_pad():
    assert response_content(encode("12<eos>34")) == encode("12")
    assert response_content(encode("1<pad>2")) == encode("12")
    assert response_content([]) == []


@pytest.mark.parametrize(
    ("name", "digits", "prompt", "answer"),
    [
        ("copy", "31", "<bos>C31=", "31"),
        ("reverse", "31", "<bos>R31=", "13"),
        ("sort", "312", "<bos>S312=", "123"),
        ("add", "1725", "<bos>A17+25=", "042"),
        ("add", "9999", "<bos>A99+99=", "198"),
        ("greater", "31", "<bos>G31=", "9"),
    ],
)
def test_problems_from_hand_digits(name, digits, prompt, answer):
    task = make_task(name, difficulty=len(digits) // 2 if name == "add" else len(digits))
    problem = task._make([int(c) for c in digits])
    assert decode(problem.prompt) == prompt
    assert decode(problem.answer) == answer
    assert problem.max_new_tokens == len(answer)
    assert len(problem.prompt) == task.prompt_length and problem.max_new_tokens == task.max_new_tokens


def test_correctness_on_hand_responses():
    copy = make_task("copy", 2)._make([3, 1])
    assert copy.task.rewards(copy, encode("31"))["reward/correct"] == 1.0
    assert copy.task.rewards(copy, encode("31<eos>"))["reward/correct"] == 1.0
    assert copy.task.rewards(copy, encode("13"))["reward/correct"] == 0.0
    assert copy.task.rewards(copy, encode("3<eos>"))["reward/correct"] == 0.0
    greater = make_task("greater", 2)._make([3, 5])
    got = [greater.task.rewards(greater, encode(r))["reward/correct"] for r in ("6", "9", "5", "2", "+")]
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_partial_format_and_brevity_components():
    task = make_task("copy", 3, reward_components=("reward/correct", "reward/partial", "reward/format",
                                                  "reward/brevity"), extra_tokens=1)
    p = task._make([1, 2, 3])
    assert p.max_new_tokens == 4
    assert task.rewards(p, encode("123<eos>")) == {
        "reward/correct": 1.0, "reward/partial": 1.0, "reward/format": 1.0, "reward/brevity": 0.25,
    }
    assert task.rewards(p, encode("1291")) == {
        "reward/correct": 0.0, "reward/partial": 2 / 3, "reward/format": 0.0, "reward/brevity": 0.0,
    }
    assert task.rewards(p, encode("<eos>")) == {
        "reward/correct": 0.0, "reward/partial": 0.0, "reward/format": 1.0, "reward/brevity": 1.0,
    }
    assert task.rewards(p, encode("1+<eos>"))["reward/format"] == 0.0


def test_prompts_are_reproducible_from_the_generator():
    task = make_task("sort", 4)
    a = task.sample_prompts(8, torch.Generator().manual_seed(3))
    b = task.sample_prompts(8, torch.Generator().manual_seed(3))
    c = task.sample_prompts(8, torch.Generator().manual_seed(4))
    assert a == b and a != c
    assert all(decode(p.answer) == "".join(sorted(decode(p.prompt)[6:-1])) for p in a)
    greater = make_task("greater", 3).sample_prompts(200, torch.Generator().manual_seed(0))
    assert all(9 not in [TOKENS[t] for t in p.prompt] for p in greater)  # digit 9 never appears


def test_score_responses_fills_missing_components_with_zero():
    a = make_task("copy", 1)._make([4])
    b = make_task("copy", 1, reward_components=("reward/correct", "reward/brevity"))._make([5])
    out = score_responses([a, b], [encode("4"), encode("5")])
    assert sorted(out) == ["reward/brevity", "reward/correct"]
    assert out["reward/correct"].tolist() == [1.0, 1.0]
    assert out["reward/brevity"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="problems"):
        score_responses([a], [])


def test_bad_task_arguments_raise():
    assert set(TASK_NAMES) == {"greater", "copy", "reverse", "sort", "add"}
    with pytest.raises(ValueError, match="unknown task"):
        make_task("multiply")
    with pytest.raises(ValueError, match="difficulty"):
        make_task("copy", MAX_DIFFICULTY + 1)
    with pytest.raises(ValueError, match="difficulty"):
        make_task("copy", 0)
    with pytest.raises(ValueError, match="unknown reward component"):
        make_task("copy", reward_components=("reward/length",))
    with pytest.raises(ValueError, match="duplicates"):
        make_task("copy", reward_components=("reward/correct", "reward/correct"))
    with pytest.raises(ValueError, match="extra_tokens"):
        make_task("copy", extra_tokens=-1)
    with pytest.raises(ValueError, match="positive"):
        make_task("copy").sample_prompts(0)
    with pytest.raises(TypeError, match="Generator"):
        make_task("copy").sample_prompts(2, generator=0)
    assert PAD_ID == 0 and EOS_ID == 2
