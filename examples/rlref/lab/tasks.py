"""Toy tasks with verifiable rewards, and the shared vocabulary they are written in.

Every task turns a seed into prompts and reference answers, and scores a sampled response with
named reward components ``reward/<name>`` -- the way a NeMo RL environment returns several rewards
(kept in the batch as ``reward/<name>`` keys and summed, unweighted, into the total reward;
nemo_rl/experience/rollouts.py:960-975).

Tasks (``make_task(name, difficulty)``; ``difficulty`` is the number of digits, 1..``MAX_DIFFICULTY``):

=========  ================================================  ==================================
name       prompt -> a correct response                      chance for a uniform random policy
=========  ================================================  ==================================
greater    ``G 3 1 =`` -> any one digit > max(digits)        about 1/4 at difficulty 1 (easiest)
copy       ``C 3 1 =`` -> ``3 1``                            (1/20)^k
reverse    ``R 3 1 =`` -> ``1 3``                            (1/20)^k
sort       ``S 3 1 2 =`` -> ``1 2 3``                        (1/20)^k
add        ``A 1 7 + 2 5 =`` -> ``0 4 2`` (k+1 digits)       (1/20)^(k+1)
=========  ================================================  ==================================

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

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "TOKENS", "VOCAB_SIZE", "PAD_ID", "BOS_ID", "EOS_ID", "EQ_ID", "PLUS_ID", "DIGIT_IDS",
    "encode", "decode", "Problem", "Task", "make_task", "TASK_NAMES", "REWARD_COMPONENTS",
    "MAX_DIFFICULTY", "score_responses", "response_content",
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


class Task:
    """A toy task: ``sample_prompts(n, generator)`` and ``rewards(problem, response)``.

    Subclasses set ``marker`` and implement ``_answer(digits)``; ``greater`` and ``add`` also
    change how prompts are drawn or checked.
    """

    name: str = ""
    marker: str = ""

    def __init__(self, difficulty: int = 1, reward_components: Sequence[str] | None = None,
                 extra_tokens: int = 0) -> None:
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
        self.difficulty = difficulty
        self.reward_components = comps
        self.extra_tokens = extra_tokens

    def __repr__(self) -> str:
        return (f"make_task({self.name!r}, difficulty={self.difficulty}, "
                f"reward_components={self.reward_components}, extra_tokens={self.extra_tokens})")

    # -- problem generation -------------------------------------------------------------------
    def _digits(self, n: int, generator: torch.Generator, high: int = 10) -> torch.Tensor:
        return torch.randint(0, high, (n, self.difficulty), generator=generator)

    def _answer(self, digits: list[int]) -> list[int]:
        raise NotImplementedError

    def _make(self, digits: list[int]) -> Problem:
        prompt = [BOS_ID, _INDEX[self.marker], *(DIGIT_IDS[d] for d in digits), EQ_ID]
        answer = [DIGIT_IDS[d] for d in self._answer(digits)]
        return Problem(tuple(prompt), tuple(answer), len(answer) + self.extra_tokens, self)

    def sample_prompts(self, n: int, generator: torch.Generator | None = None) -> list[Problem]:
        """``n`` problems drawn with ``generator`` (a seeded ``torch.Generator``; None = global RNG)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return [self._make(row) for row in self._digits(n, generator).tolist()]

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
    name, marker = "greater", "G"

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


_REGISTRY: dict[str, type[Task]] = {cls.name: cls for cls in (_Greater, _Copy, _Reverse, _Sort, _Add)}
#: Task names, roughly from easiest to hardest at equal difficulty.
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_task(name: str, difficulty: int = 1, reward_components: Sequence[str] | None = None,
              extra_tokens: int = 0) -> Task:
    """Build a task by name (see the module docstring for the table of tasks and components).

    >>> task = make_task("copy", difficulty=2, reward_components=("reward/correct", "reward/format"),
    ...                  extra_tokens=1)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; choose from {TASK_NAMES}")
    return _REGISTRY[name](difficulty=difficulty, reward_components=reward_components,
                           extra_tokens=extra_tokens)


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
