"""The RL lab: a tiny causal LM, toy tasks with verifiable rewards, rollouts and training loops.

Everything runs on a CPU in seconds at the ``SMALL`` scale and on a GPU at ``FULL``::

    from rlref.lab import SMALL, TinyCausalLM, evaluate, grpo_train, make_task
    policy = TinyCausalLM(SMALL.policy, seed=0)
    task = make_task("last")  # answer = last of 3 digits; about a quarter of the prompts held out
    history = grpo_train(policy, task, SMALL.grpo_config(seed=0, max_num_steps=100))
    history.series("train/reward")
    evaluate(policy, task.held_out_problems())["accuracy"]  # prompts training never drew

``make_task("greater")`` is a sanity task with a constant optimum (``9`` is always right); measure
learning on :data:`LEARNING_TASKS`.

Modules: :mod:`rlref.lab.policy` (model), :mod:`rlref.lab.tasks` (vocabulary, tasks, rewards),
:mod:`rlref.lab.rollout` (generation, log-probs, NeMo RL batch layout), :mod:`rlref.lab.train`
(GRPO/DPO/SFT loops, History, scale presets).
"""

from rlref.lab.batched import grpo_train_seeds
from rlref.lab.policy import PolicyConfig, TinyCausalLM, count_parameters, make_reference
from rlref.lab.rollout import (
    RolloutBatch,
    generate,
    make_generation_model,
    pad_sequences,
    refit,
    rollout,
    sequence_logprobs,
    token_entropy,
)
from rlref.lab.tasks import (
    BOS_ID,
    DIGIT_IDS,
    EOS_ID,
    LEARNING_TASKS,
    MAX_DIFFICULTY,
    PAD_ID,
    REWARD_COMPONENTS,
    SPLITS,
    TASK_NAMES,
    TOKENS,
    VOCAB_SIZE,
    Problem,
    Task,
    decode,
    encode,
    make_task,
    response_content,
    score_responses,
)
from rlref.lab.train import (
    ADV_ESTIMATORS,
    FULL,
    NONFINITE_MODES,
    SMALL,
    DPOConfig,
    GRPOConfig,
    History,
    LabScale,
    SFTConfig,
    accumulate_gradients,
    cpu_threads,
    dpo_train,
    evaluate,
    grpo_train,
    lab_scale,
    make_preference_pairs,
    make_sft_batch,
    sft_train,
    train_step,
)

__all__ = [
    "PolicyConfig", "TinyCausalLM", "count_parameters", "make_reference",
    "RolloutBatch", "generate", "make_generation_model", "pad_sequences", "refit", "rollout",
    "sequence_logprobs", "token_entropy",
    "BOS_ID", "DIGIT_IDS", "EOS_ID", "LEARNING_TASKS", "MAX_DIFFICULTY", "PAD_ID", "REWARD_COMPONENTS",
    "SPLITS", "TASK_NAMES", "TOKENS", "VOCAB_SIZE", "Problem", "Task", "decode", "encode", "make_task",
    "response_content", "score_responses",
    "ADV_ESTIMATORS", "FULL", "NONFINITE_MODES", "SMALL", "DPOConfig", "GRPOConfig", "History", "LabScale",
    "SFTConfig", "accumulate_gradients", "cpu_threads", "dpo_train", "evaluate", "grpo_train", "lab_scale",
    "make_preference_pairs", "make_sft_batch", "sft_train", "train_step",
    "grpo_train_seeds",
]
