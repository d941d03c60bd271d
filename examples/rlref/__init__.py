"""rlref: from-scratch reference implementations of NeMo RL's math, and a tiny RL lab.

Modules
-------
- ``rlref.masking``: masked means with global normalisation (NeMo RL's ``masked_mean``).
- ``rlref.kl``: the k1/k2/k3 KL estimators with clamps and importance weights.
- ``rlref.losses``: the clipped policy-gradient, DPO and NLL losses (NeMo RL's loss functions).
- ``rlref.advantages``: GRPO, GDPO, Reinforce++, raw-reward and GAE advantages, reward scaling.
- ``rlref.lab``: a tiny causal LM, toy tasks with verifiable rewards, rollouts and training loops.
- ``rlref.notebook``: the provenance header and size knob every example notebook starts with.
- ``rlref.plotting``: shared figure helpers.

Nothing here imports ``nemo_rl``: each docstring names the NeMo RL counterpart instead.
"""

__version__ = "0.1.0"
