"""Vocabulary and tasks: encoding, prompts from seeds, every reward component on hand examples, the
train / held-out split and the exact scores of constant and uniformly random policies."""

import itertools

import pytest
import torch

from rlref.lab import (
    DIGIT_IDS,
    EOS_ID,
    LEARNING_TASKS,
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
        ("last", "314", "<bos>314=", "4"),
        ("pick", "2314", "<bos>2+314=", "1"),
        ("pick", "3314", "<bos>3+314=", "4"),
    ],
)
def test_problems_from_hand_digits(name, digits, prompt, answer):
    size = {"add": len(digits) // 2, "pick": len(digits) - 1}.get(name, len(digits))
    task = make_task(name, difficulty=size)
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
    assert set(TASK_NAMES) == {"greater", "copy", "reverse", "sort", "add", "last", "pick"}
    assert set(LEARNING_TASKS) <= set(TASK_NAMES)
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
    with pytest.raises(ValueError, match="split"):
        make_task("last").sample_prompts(2, split="all")
    with pytest.raises(ValueError, match="split"):
        make_task("last").problems("test")
    for fraction in (-0.1, 1.0, True, "0.2"):
        with pytest.raises(ValueError, match="held_out_fraction"):
            make_task("last", held_out_fraction=fraction)
    with pytest.raises(ValueError, match="non-empty"):
        make_task("last", 1)  # ten prompts with one context: all held out or none
    with pytest.raises(ValueError, match="no held-out prompts"):
        make_task("copy", 2).held_out_problems()
    with pytest.raises(ValueError, match="no held-out prompts"):
        make_task("copy", 2).sample_prompts(3, split="held_out")
    with pytest.raises(ValueError, match="enumerates"):
        make_task("last", 6).held_out_problems()
    with pytest.raises(TypeError, match="Problem"):
        make_task("last").is_held_out([1, 2, 3])


# -- train / held-out split ---------------------------------------------------------------------

def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["greater", "copy", "reverse", "sort", "add"])
def test_tasks_without_a_split_draw_exactly_as_before(name):
    # held_out_fraction 0 leaves the prompt stream untouched: one randint block, nothing redrawn.
    task = make_task(name, 3)
    assert task.held_out_fraction == 0 and not any(task.is_held_out(p) for p in task.sample_prompts(50))
    width, high = (6, 10) if name == "add" else (3, 9 if name == "greater" else 10)
    digits = torch.randint(0, high, (20, width), generator=_gen(5)).tolist()
    assert task.sample_prompts(20, _gen(5)) == [task._make(d) for d in digits]


@pytest.mark.parametrize(("name", "difficulty", "size", "n_held"),
                         [("last", 3, 1000, 250), ("pick", 3, 3000, 760), ("last", 4, 10_000, 2480)])
def test_split_is_fixed_disjoint_and_covers_the_prompt_space(name, difficulty, size, n_held):
    task = make_task(name, difficulty)
    train, held = task.problems("train"), task.held_out_problems()
    assert task.prompt_space_size == size == len(task.problems("all"))
    # The split is a hash of the prompt: the same counts in every process, whatever the seeds.
    assert len(held) == n_held and 0.2 < n_held / size < 0.3
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in held})
    assert len(train) + len(held) == size
    assert held == sorted(held, key=lambda p: p.prompt) == make_task(name, difficulty).held_out_problems()
    assert all(task.is_held_out(p) for p in held) and not any(task.is_held_out(p) for p in train)


@pytest.mark.parametrize("name", LEARNING_TASKS)
def test_sample_prompts_draws_training_prompts_only_unless_asked(name):
    task = make_task(name)
    held = {p.prompt for p in task.held_out_problems()}
    drawn = task.sample_prompts(3000, _gen(0))
    assert not held & {p.prompt for p in drawn}
    assert len({p.prompt for p in drawn}) > 0.5 * len(task.problems("train"))  # not a few prompts
    assert task.sample_prompts(40, _gen(1)) == task.sample_prompts(40, _gen(1))
    assert {p.prompt for p in task.sample_prompts(500, _gen(2), split="held_out")} <= held
    # The answers of the training draws are (close to) uniform over the ten digits.
    counts = torch.bincount(torch.tensor([p.answer[0] for p in drawn]), minlength=VOCAB_SIZE)
    assert counts[list(DIGIT_IDS)].min() > 0.08 * len(drawn)


@pytest.mark.parametrize("name", LEARNING_TASKS)
def test_held_out_contexts_never_appear_in_training(name):
    # The split hashes the prompt without its answer digit: a held-out context (the other digits) is
    # never seen in training with any answer, so held-out accuracy is not recall of a seen context.
    task = make_task(name)
    key = task._split_key
    train_keys = {key(p.prompt) for p in task.problems("train")}
    assert not train_keys & {key(p.prompt) for p in task.held_out_problems()}
    assert len(task.problems("train")) == 10 * len(train_keys)  # ten answers per context


def _brute_force_scores(task, split):
    """Best constant and uniform-random accuracy by scoring every digit string with ``rewards``."""
    problems = task.problems(split)
    length = len(problems[0].answer)
    candidates = [encode("".join(c)) for c in itertools.product("0123456789", repeat=length)]
    per_candidate = [sum(task.rewards(p, c)["reward/correct"] for p in problems) / len(problems)
                     for c in candidates]
    return max(per_candidate), sum(per_candidate) / len(candidates)


@pytest.mark.parametrize(("name", "difficulty", "constant", "uniform"), [
    ("last", 3, 0.1, 0.1), ("pick", 2, 0.1, 0.1), ("greater", 2, 1.0, 285 / 810), ("greater", 1, 1.0, 0.5),
    ("copy", 1, 0.1, 0.1), ("add", 1, 0.1, 0.01), ("sort", 2, 0.02, 0.01),
])
def test_constant_and_uniform_policy_scores_are_exact(name, difficulty, constant, uniform):
    task = make_task(name, difficulty)
    splits = ("train", "held_out", "all") if task.held_out_fraction else ("train", "all")
    for split in splits:
        got = (task.constant_policy_score(split), task.uniform_policy_score(split))
        assert got == pytest.approx(_brute_force_scores(task, split))
        assert got == pytest.approx((constant, uniform))
    # The learning tasks: no constant response beats a uniformly random digit, on either part;
    # ``greater`` is the sanity task whose constant response is always right.
    if name in LEARNING_TASKS:
        assert task.constant_policy_score("held_out") <= task.uniform_policy_score("held_out")
    assert (name == "greater") == (task.constant_policy_score() == 1.0)


def test_greater_uniform_score_matches_closed_form():
    # Digits 0..8, k of them: a random digit d is right with probability (9 - max) / 10.
    k = 2
    p_max = [((m + 1) ** k - m**k) / 9**k for m in range(9)]
    assert make_task("greater", k).uniform_policy_score() == pytest.approx(
        sum(p * (9 - m) / 10 for m, p in enumerate(p_max)))


def test_held_out_fraction_zero_turns_the_split_off():
    task = make_task("last", 3, held_out_fraction=0)
    assert not any(task.is_held_out(p) for p in task.problems("all"))
    assert len(task.problems("train")) == 1000
    bigger = make_task("last", 3, held_out_fraction=0.5)
    assert len(bigger.held_out_problems()) > len(make_task("last", 3).held_out_problems())
