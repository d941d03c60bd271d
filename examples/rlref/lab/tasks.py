"""Toy tasks with verifiable rewards, and the shared vocabulary they are written in.

Every task turns a seed into prompts and reference answers, and scores a sampled response with
named reward components ``reward/<name>`` -- the way a NeMo RL environment returns several rewards
(kept in the batch as ``reward/<name>`` keys and summed, unweighted, into the total reward;
nemo_rl/experience/rollouts.py:960-975).

Tasks (``make_task(name, difficulty)``; ``difficulty`` is the number of digits, 1..``MAX_DIFFICULTY``;
"constant" is the accuracy of the best constant response, "uniform" that of a uniformly random
digit string of the answer's length, both at the default difficulty):

=========  ==========================================  ============  ==========  =========  =========
name       prompt -> a correct response                 held-out      default     constant   uniform
                                                        split         difficulty
=========  ==========================================  ============  ==========  =========  =========
last       ``3 1 4 =`` -> ``4`` (the last digit)        about 25 %    3           0.1        0.1
pick       ``2 + 3 1 4 =`` -> ``1`` (digit number 2)    about 25 %    3           0.1        0.1
greater    ``G 3 1 =`` -> any digit > max(digits)       none          1           **1.0**    0.5
copy       ``C 3 1 =`` -> ``3 1``                       none          1           0.1        0.1
reverse    ``R 3 1 =`` -> ``1 3``                       none          1           0.1        0.1
sort       ``S 3 1 2 =`` -> ``1 2 3``                   none          1           0.1        0.1
add        ``A 1 7 + 2 5 =`` -> ``0 4 2`` (k+1 digits)  none          1           **0.1**    0.01
=========  ==========================================  ============  ==========  =========  =========

**Learning tasks.** ``last`` and ``pick`` are the tasks to measure learning on: the answer is
uniform over the ten digits, so no constant response beats a uniformly random digit, and their
prompt spaces (10^k and k * 10^k prompts) hold a held-out part that training never sees. ``last``
is the easy one: a GRPO run of the lab's policy (16 prompts x 8 responses a step) takes it from
chance to most prompts right in about 100 steps, as accurate on held-out prompts as on training ones
(tests/lab/test_train.py checks one run). ``pick`` (the position to copy is part of the prompt) is
harder: at difficulty 2 the same runs need about 200 steps to get half the prompts right.

(``sort`` and ``add`` also have a constant response that beats chance: 0.02 against 0.01 for
``sort`` at 2 digits, 0.1 against 0.01 for ``add`` at 1 digit.)

**Sanity task.** ``greater`` draws its prompt digits from 0..8, so the constant response ``9`` is
always correct (``constant_policy_score() == 1.0``): a run that "learns" it only learns to say 9.
Use it to check that a loop works, never as evidence that an algorithm learns a prompt-dependent skill.

Train / held-out split (``held_out_fraction``; ``last`` and ``pick`` default to 0.25, the others
to 0, which leaves their prompt draws exactly as they were):

- a prompt is held out when a hash of its tokens (BLAKE2b, no seed) falls below
  ``held_out_fraction``: the split is deterministic, the same in every run, seed and process.
  ``last`` and ``pick`` hash the prompt without its answer digit, so a held-out prompt's context
  (the other digits) never appears in training with any answer, and the answers of each part stay
  exactly uniform (``constant_policy_score() == uniform_policy_score() == 0.1`` on both parts);
- ``task.sample_prompts(n, generator)`` draws **training** prompts only (a held-out draw is
  redrawn), so every training loop that draws from the task (``grpo_train``, ``sft_train``,
  ``dpo_train``, the curriculum samplers) never sees a held-out prompt;
  ``sample_prompts(n, generator, split="held_out")`` draws held-out prompts;
- ``task.held_out_problems()``: every held-out problem, sorted by prompt; ``task.is_held_out(problem)``;
- ``task.constant_policy_score(split)`` and ``task.uniform_policy_score(split)`` (split ``"train"``,
  ``"held_out"`` or ``"all"``): exact accuracies by enumeration of the prompts, for ``reward/correct``.

NeMo RL counterpart: the separate ``data.train`` and ``data.validation`` datasets of a GRPO config
(validation every ``grpo.val_period`` steps on ``grpo.max_val_samples`` prompts).

Reward components (choose any subset with ``reward_components=``; the default is correctness only):

- ``reward/correct``: 1 if the response's content equals the answer (``greater``: is one digit
  larger than every prompt digit), else 0.
- ``reward/partial``: the fraction of answer positions the content gets right (a dense signal).
- ``reward/format``: 1 if the response stops with EOS and its content is only digits.
- ``reward/brevity``: ``1 - len(content) / max_new_tokens`` (conflicts with correctness).

The *content* of a response is its tokens before the first EOS (all of them if there is none).
A task allows ``max_new_tokens = len(answer) + extra_tokens`` generated tokens; with
``extra_tokens=0`` a correct response needs no EOS, with ``extra_tokens >= 1`` it must stop with one.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "TOKENS", "VOCAB_SIZE", "PAD_ID", "BOS_ID", "EOS_ID", "EQ_ID", "PLUS_ID", "DIGIT_IDS",
    "encode", "decode", "Problem", "Task", "make_task", "TASK_NAMES", "REWARD_COMPONENTS",
    "MAX_DIFFICULTY", "score_responses", "response_content", "SPLITS", "LEARNING_TASKS",
]

DIGITS = tuple(str(d) for d in range(10))
#: The shared vocabulary: specials, operators, digits, one marker letter per task.
TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "=", "+", *DIGITS, "G", "C", "R", "S", "A")
VOCAB_SIZE = len(TOKENS)
_INDEX = {t: i for i, t in enumerate(TOKENS)}
PAD_ID, BOS_ID, EOS_ID, EQ_ID, PLUS_ID = (_INDEX[t] for t in ("<pad>", "<bos>", "<eos>", "=", "+"))
DIGIT_IDS: tuple[int, ...] = tuple(_INDEX[d] for d in DIGITS)
_DIGIT_VALUE = {tid: d for d, tid in enumerate(DIGIT_IDS)}

REWARD_COMPONENTS = ("reward/correct", "reward/partial", "reward/format", "reward/brevity")
MAX_DIFFICULTY = 8
#: Where prompts come from: the training part, the held-out part, or the whole prompt space.
SPLITS = ("train", "held_out", "all")
#: Most prompts a task enumerates (for ``held_out_problems`` and the exact policy scores).
MAX_ENUMERATED_PROMPTS = 200_000
_SPLIT_SALT = b"rlref.lab held-out split v1"


def encode(text: str) -> list[int]:
    """Token ids of ``text``: ``<pad>``, ``<bos>``, ``<eos>`` or any single vocabulary character.

    ``encode("<bos>C31=")`` -> ``[1, 16, 8, 6, 3]``; spaces are ignored.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids, i = [], 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        if text[i] == "<":
            j = text.find(">", i)
            if j < 0 or text[i:j + 1] not in _INDEX:
                raise ValueError(f"unknown special token at position {i} in {text!r}")
            ids.append(_INDEX[text[i:j + 1]])
            i = j + 1
            continue
        if text[i] not in _INDEX:
            raise ValueError(f"character {text[i]!r} is not in the vocabulary {TOKENS}")
        ids.append(_INDEX[text[i]])
        i += 1
    return ids


def decode(ids) -> str:
    """The text of token ids (a list or a 1-D tensor); ``<pad>`` tokens are dropped."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    out = []
    for t in ids:
        if not isinstance(t, int) or not 0 <= t < VOCAB_SIZE:
            raise ValueError(f"token id {t!r} is outside [0, {VOCAB_SIZE})")
        if t != PAD_ID:
            out.append(TOKENS[t])
    return "".join(out)


def response_content(response: Sequence[int]) -> list[int]:
    """The tokens before the first EOS (all of them if there is no EOS); PAD tokens are dropped."""
    content = []
    for t in response:
        t = int(t)
        if t == EOS_ID:
            break
        if t != PAD_ID:
            content.append(t)
    return content


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer. ``prompt`` starts with BOS and ends with ``=``."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    max_new_tokens: int
    task: Task = field(compare=False, repr=False)

    def text(self) -> str:
        return f"{decode(self.prompt)} -> {decode(self.answer)}"


def _check_split(split: str, allowed: Sequence[str] = SPLITS) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")


class Task:
    """A toy task: ``sample_prompts(n, generator)`` and ``rewards(problem, response)``.

    Subclasses set ``marker`` and implement ``_answer(digits)``; ``greater``, ``add`` and ``pick``
    also change how prompts are drawn or checked. ``held_out_fraction`` (about that share of the
    prompt space is held out, by a seed-free hash of the prompt) is described in the module docstring.
    """

    name: str = ""
    marker: str = ""
    #: Share of the prompt space held out from training (0: no split).
    held_out_fraction: float = 0.0
    default_held_out_fraction: float = 0.0
    default_difficulty: int = 1

    def __init__(self, difficulty: int | None = None, reward_components: Sequence[str] | None = None,
                 extra_tokens: int = 0, held_out_fraction: float | None = None) -> None:
        if difficulty is None:
            difficulty = self.default_difficulty
        if isinstance(difficulty, bool) or not isinstance(difficulty, int) or not (
            1 <= difficulty <= MAX_DIFFICULTY
        ):
            raise ValueError(f"difficulty must be an int in [1, {MAX_DIFFICULTY}], got {difficulty!r}")
        if isinstance(extra_tokens, bool) or not isinstance(extra_tokens, int) or extra_tokens < 0:
            raise ValueError(f"extra_tokens must be an int >= 0, got {extra_tokens!r}")
        comps = ("reward/correct",) if reward_components is None else tuple(reward_components)
        if not comps:
            raise ValueError("reward_components must name at least one component")
        for c in comps:
            if c not in REWARD_COMPONENTS:
                raise ValueError(f"unknown reward component {c!r}; choose from {REWARD_COMPONENTS}")
        if len(set(comps)) != len(comps):
            raise ValueError(f"reward_components has duplicates: {comps}")
        if held_out_fraction is None:
            held_out_fraction = self.default_held_out_fraction
        if isinstance(held_out_fraction, bool) or not isinstance(held_out_fraction, (int, float)) or not (
            0 <= held_out_fraction < 1
        ):
            raise ValueError(f"held_out_fraction must be a number in [0, 1), got {held_out_fraction!r}")
        self.difficulty = difficulty
        self.reward_components = comps
        self.extra_tokens = extra_tokens
        self.held_out_fraction = float(held_out_fraction)
        if self.held_out_fraction > 0 and self.prompt_space_size <= 20_000:
            n_held = sum(self.is_held_out(p) for p in self._enumerate("all"))
            if not 0 < n_held < self.prompt_space_size:
                raise ValueError(
                    f"held_out_fraction={held_out_fraction} leaves {n_held} of the {self.prompt_space_size} "
                    f"prompts of {self.name!r} at difficulty {difficulty} held out; both parts must be "
                    "non-empty (raise the difficulty, change the fraction, or pass 0 for no split)")

    def __repr__(self) -> str:
        return (f"make_task({self.name!r}, difficulty={self.difficulty}, "
                f"reward_components={self.reward_components}, extra_tokens={self.extra_tokens}, "
                f"held_out_fraction={self.held_out_fraction})")

    # -- problem generation -------------------------------------------------------------------
    def _digits(self, n: int, generator: torch.Generator, high: int = 10) -> torch.Tensor:
        return torch.randint(0, high, (n, self.difficulty), generator=generator)

    def _answer(self, digits: list[int]) -> list[int]:
        raise NotImplementedError

    def _make(self, digits: list[int]) -> Problem:
        prompt = [BOS_ID, _INDEX[self.marker], *(DIGIT_IDS[d] for d in digits), EQ_ID]
        answer = [DIGIT_IDS[d] for d in self._answer(digits)]
        return Problem(tuple(prompt), tuple(answer), len(answer) + self.extra_tokens, self)

    def _value_ranges(self) -> list[range]:
        """The values each position of a digit row can take (``_digits`` draws them uniformly)."""
        return [range(10)] * self.difficulty

    @property
    def prompt_space_size(self) -> int:
        """Number of distinct prompts (digit rows) the task can draw."""
        return math.prod(len(r) for r in self._value_ranges())

    def sample_prompts(self, n: int, generator: torch.Generator | None = None,
                       split: str = "train") -> list[Problem]:
        """``n`` problems drawn with ``generator`` (a seeded ``torch.Generator``; None = global RNG).

        ``split="train"`` (default) draws training prompts only: a held-out draw is redrawn, one row
        at a time (with no held-out part this is a plain draw). ``split="held_out"`` draws held-out
        prompts only.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        _check_split(split, ("train", "held_out"))
        want_held = split == "held_out"
        if want_held and self.held_out_fraction == 0:
            raise ValueError(f"task {self.name!r} has no held-out prompts (held_out_fraction=0)")
        problems = [self._make(row) for row in self._digits(n, generator).tolist()]
        if self.held_out_fraction == 0:
            return problems
        for i, problem in enumerate(problems):
            while self.is_held_out(problem) != want_held:
                problem = self._make(self._digits(1, generator).tolist()[0])
            problems[i] = problem
        return problems

    def _split_key(self, prompt: tuple[int, ...]) -> tuple[int, ...]:
        """The prompt tokens the split hashes (tasks with a one-digit answer copied from the prompt
        blank that digit, so the ten prompts that differ only in the answer fall on the same side
        and each part's answers stay exactly uniform)."""
        return prompt

    def is_held_out(self, problem: Problem) -> bool:
        """Whether ``problem`` lies in the held-out part: BLAKE2b of its prompt tokens (``_split_key``),
        read as a number in [0, 1), is below ``held_out_fraction`` (no seed: the same split everywhere)."""
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
        if self.held_out_fraction == 0:
            return False
        key = bytes(self._split_key(problem.prompt))
        digest = hashlib.blake2b(key, digest_size=8, key=_SPLIT_SALT).digest()
        return int.from_bytes(digest, "little") / 2.0**64 < self.held_out_fraction

    def _enumerate(self, split: str) -> Iterator[Problem]:
        _check_split(split)
        if self.prompt_space_size > MAX_ENUMERATED_PROMPTS:
            raise ValueError(
                f"task {self.name!r} at difficulty {self.difficulty} has {self.prompt_space_size} prompts, "
                f"more than the {MAX_ENUMERATED_PROMPTS} this enumerates; lower the difficulty or draw "
                "a sample with sample_prompts(n, generator, split=...)")
        for row in itertools.product(*self._value_ranges()):
            problem = self._make(list(row))
            if split == "all" or self.is_held_out(problem) == (split == "held_out"):
                yield problem

    def held_out_problems(self) -> list[Problem]:
        """Every held-out problem, sorted by prompt (raises when the task has no held-out part)."""
        if self.held_out_fraction == 0:
            raise ValueError(f"task {self.name!r} has no held-out prompts (held_out_fraction=0)")
        return sorted(self._enumerate("held_out"), key=lambda p: p.prompt)

    def problems(self, split: str = "train") -> list[Problem]:
        """Every problem of ``split`` (``"train"``, ``"held_out"`` or ``"all"``), sorted by prompt."""
        return sorted(self._enumerate(split), key=lambda p: p.prompt)

    def constant_policy_score(self, split: str = "train") -> float:
        """Accuracy (``reward/correct``) of the best constant response over the prompts of ``split``.

        Exact, by enumeration: the largest share of prompts that one digit string of the answer's
        length answers correctly (for exact-match tasks, the most frequent answer's share).
        """
        problems = self.problems(split)
        if not problems:
            raise ValueError(f"split {split!r} of task {self.name!r} is empty")
        if type(self).is_correct is Task.is_correct:
            return max(Counter(p.answer for p in problems).values()) / len(problems)
        length = len(problems[0].answer)
        return max(sum(self.is_correct(p, list(c)) for p in problems)
                   for c in itertools.product(DIGIT_IDS, repeat=length)) / len(problems)

    def uniform_policy_score(self, split: str = "train") -> float:
        """Accuracy (``reward/correct``) of a uniformly random digit string of the answer's length.

        Exact, by enumeration: the mean over prompts of (correct strings) / 10^length; for
        exact-match tasks each prompt has one correct string, so this is 10^-length.
        """
        problems = self.problems(split)
        if not problems:
            raise ValueError(f"split {split!r} of task {self.name!r} is empty")
        length = len(problems[0].answer)
        if type(self).is_correct is Task.is_correct:
            return 1.0 / 10**length
        hits = sum(self.is_correct(p, list(c)) for p in problems
                   for c in itertools.product(DIGIT_IDS, repeat=length))
        return hits / (len(problems) * 10**length)

    @property
    def prompt_length(self) -> int:
        return self.difficulty + 3

    @property
    def max_new_tokens(self) -> int:
        return len(self._answer([0] * self.difficulty)) + self.extra_tokens

    # -- scoring ------------------------------------------------------------------------------
    def is_correct(self, problem: Problem, content: list[int]) -> bool:
        return tuple(content) == problem.answer

    def rewards(self, problem: Problem, response: Sequence[int]) -> dict[str, float]:
        """The chosen ``reward/<name>`` components for one response (token ids after the prompt)."""
        content = response_content(response)
        response = [int(t) for t in response]
        out = {}
        for name in self.reward_components:
            if name == "reward/correct":
                out[name] = float(self.is_correct(problem, content))
            elif name == "reward/partial":
                if self.is_correct(problem, content):
                    out[name] = 1.0
                else:
                    hits = sum(a == b for a, b in zip(content, problem.answer, strict=False))
                    out[name] = hits / len(problem.answer)
            elif name == "reward/format":
                stopped = EOS_ID in response
                out[name] = float(stopped and all(t in _DIGIT_VALUE for t in content))
            else:  # reward/brevity
                out[name] = 1.0 - len(content) / problem.max_new_tokens
        return out


class _Greater(Task):
    """Sanity task with a constant optimum: prompt digits are 0..8, so ``9`` is always correct."""

    name, marker = "greater", "G"

    def _value_ranges(self):
        return [range(9)] * self.difficulty

    def _digits(self, n, generator, high=10):
        return torch.randint(0, 9, (n, self.difficulty), generator=generator)  # 0..8: "9" always wins

    def _answer(self, digits):
        return [9]

    def is_correct(self, problem, content):
        if len(content) != 1 or content[0] not in _DIGIT_VALUE:
            return False
        prompt_digits = [_DIGIT_VALUE[t] for t in problem.prompt if t in _DIGIT_VALUE]
        return _DIGIT_VALUE[content[0]] > max(prompt_digits)


class _Copy(Task):
    name, marker = "copy", "C"

    def _answer(self, digits):
        return list(digits)


class _Reverse(Task):
    name, marker = "reverse", "R"

    def _answer(self, digits):
        return list(reversed(digits))


class _Sort(Task):
    name, marker = "sort", "S"

    def _answer(self, digits):
        return sorted(digits)


class _Add(Task):
    name, marker = "add", "A"

    def _value_ranges(self):
        return [range(10)] * (2 * self.difficulty)

    def _digits(self, n, generator, high=10):
        return torch.randint(0, 10, (n, 2 * self.difficulty), generator=generator)

    def _answer(self, digits):
        k = len(digits) // 2
        a = int("".join(map(str, digits[:k])))
        b = int("".join(map(str, digits[k:])))
        return [int(c) for c in str(a + b).zfill(k + 1)]

    def _make(self, digits):
        k = len(digits) // 2
        prompt = [BOS_ID, _INDEX["A"], *(DIGIT_IDS[d] for d in digits[:k]), PLUS_ID,
                  *(DIGIT_IDS[d] for d in digits[k:]), EQ_ID]
        answer = [DIGIT_IDS[d] for d in self._answer(digits)]
        return Problem(tuple(prompt), tuple(answer), len(answer) + self.extra_tokens, self)

    @property
    def prompt_length(self) -> int:
        return 2 * self.difficulty + 4

    @property
    def max_new_tokens(self) -> int:
        return self.difficulty + 1 + self.extra_tokens


class _Last(Task):
    """``d_1 .. d_k =`` -> ``d_k``: no marker letter; the answer is uniform over the ten digits."""

    name, marker = "last", ""
    default_difficulty, default_held_out_fraction = 3, 0.25

    def _answer(self, digits):
        return [digits[-1]]

    def _make(self, digits):
        prompt = [BOS_ID, *(DIGIT_IDS[d] for d in digits), EQ_ID]
        answer = [DIGIT_IDS[digits[-1]]]
        return Problem(tuple(prompt), tuple(answer), len(answer) + self.extra_tokens, self)

    def _split_key(self, prompt):
        return prompt[:-2]  # BOS d_1 .. d_{k-1}: the answer digit d_k and "=" left out

    @property
    def prompt_length(self) -> int:
        return self.difficulty + 2


class _Pick(Task):
    """``i + d_1 .. d_k =`` -> ``d_i`` with ``i`` in 1..k: the position to copy is part of the prompt."""

    name, marker = "pick", ""
    default_difficulty, default_held_out_fraction = 3, 0.25

    def _value_ranges(self):
        return [range(1, self.difficulty + 1)] + [range(10)] * self.difficulty

    def _digits(self, n, generator, high=10):
        index = torch.randint(1, self.difficulty + 1, (n, 1), generator=generator)
        return torch.cat([index, torch.randint(0, 10, (n, self.difficulty), generator=generator)], dim=1)

    def _answer(self, digits):
        return [digits[digits[0]]]

    def _make(self, digits):
        prompt = [BOS_ID, DIGIT_IDS[digits[0]], PLUS_ID, *(DIGIT_IDS[d] for d in digits[1:]), EQ_ID]
        answer = [DIGIT_IDS[d] for d in self._answer(digits)]
        return Problem(tuple(prompt), tuple(answer), len(answer) + self.extra_tokens, self)

    def _split_key(self, prompt):
        i = 2 + _DIGIT_VALUE[prompt[1]]  # BOS i + d_1 .. d_k =: d_i sits at index 2 + i
        return prompt[:i] + (PAD_ID,) + prompt[i + 1:]

    @property
    def prompt_length(self) -> int:
        return self.difficulty + 4

    @property
    def max_new_tokens(self) -> int:
        return 1 + self.extra_tokens


_REGISTRY: dict[str, type[Task]] = {
    cls.name: cls for cls in (_Greater, _Copy, _Reverse, _Sort, _Add, _Last, _Pick)
}
#: Task names (``greater`` is the constant-optimum sanity task; ``last`` and ``pick`` have held-out splits).
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)
#: The tasks to measure learning and generalisation on: no constant optimum, a held-out split.
LEARNING_TASKS: tuple[str, ...] = ("last", "pick")


def make_task(name: str, difficulty: int | None = None, reward_components: Sequence[str] | None = None,
              extra_tokens: int = 0, held_out_fraction: float | None = None) -> Task:
    """Build a task by name (see the module docstring for the table of tasks and components).

    ``difficulty=None`` takes the task's default (3 for ``last`` and ``pick``, 1 for the others);
    ``held_out_fraction=None`` its default (0.25 for ``last`` and ``pick``, 0 for the others).

    >>> task = make_task("copy", difficulty=2, reward_components=("reward/correct", "reward/format"),
    ...                  extra_tokens=1)
    >>> last = make_task("last")  # 3 digits; about a quarter of the 1000 prompts held out
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; choose from {TASK_NAMES}")
    return _REGISTRY[name](difficulty=difficulty, reward_components=reward_components,
                           extra_tokens=extra_tokens, held_out_fraction=held_out_fraction)


def score_responses(problems: Sequence[Problem],
                    responses: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Score each response with its problem's task: ``{"reward/<name>": float32 [B]}``.

    A component that a row's task does not compute counts 0 for that row (tasks in a mixed batch
    may choose different components).
    """
    if len(problems) != len(responses):
        raise ValueError(f"got {len(problems)} problems but {len(responses)} responses")
    per_row = [p.task.rewards(p, r) for p, r in zip(problems, responses, strict=False)]
    names = sorted({k for row in per_row for k in row})
    return {k: torch.tensor([row.get(k, 0.0) for row in per_row], dtype=torch.float32) for k in names}
