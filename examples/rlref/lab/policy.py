"""A tiny GPT-style causal language model in plain PyTorch, built from a config and a seed.

The lab's stand-in for the policy a NeMo RL run trains (a Hugging Face model loaded by the DTensor
or Megatron worker). It is small enough that a GRPO run learns a toy task in seconds on a CPU:

- token embeddings (tied with the output projection) plus learned absolute positions;
- ``n_layers`` pre-LayerNorm blocks: causal multi-head self-attention, then a GELU MLP;
- a final LayerNorm and the tied output projection to ``vocab_size`` logits.

Attention is written out (scores, causal mask, softmax) rather than calling a fused kernel, so the
computation is deterministic on CPU and identical for a row whatever padding follows it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PolicyConfig", "TinyCausalLM", "make_reference", "count_parameters"]


@dataclass(frozen=True)
class PolicyConfig:
    """Shape of a :class:`TinyCausalLM`.

    ``d_ff`` defaults to ``4 * d_model``. ``init_std`` is the standard deviation of the normal
    initialisation of every weight matrix and embedding; the small default (0.02) makes the
    untrained model's next-token distribution close to uniform.
    """

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    max_seq_len: int = 32
    d_ff: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PolicyConfig.{name} must be a positive int, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError(f"PolicyConfig.vocab_size must be >= 2, got {self.vocab_size}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"PolicyConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.d_ff is not None and (isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int)
                                      or self.d_ff < 1):
            raise ValueError(f"PolicyConfig.d_ff must be a positive int or None, got {self.d_ff!r}")
        if not isinstance(self.init_std, (int, float)) or isinstance(self.init_std, bool) or not (
            self.init_std > 0 and math.isfinite(self.init_std)
        ):
            raise ValueError(f"PolicyConfig.init_std must be a positive finite number, got {self.init_std!r}")

    @property
    def ff_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model


class _Block(nn.Module):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.ff_dim)
        self.out = nn.Linear(cfg.ff_dim, cfg.d_model)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``allowed``: boolean attention mask broadcastable to ``[B, heads, S, S]`` (True = may attend)."""
        B, S, D = x.shape
        h = self.ln1(x)
        q, k, v = self.qkv(h).split(D, dim=-1)
        hd = D // self.n_heads
        q, k, v = (t.view(B, S, self.n_heads, hd).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        att = torch.softmax(scores, dim=-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(B, S, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyCausalLM(nn.Module):
    """``forward(input_ids [B, S] int) -> logits [B, S, vocab_size]`` (logits in the parameters' dtype).

    ``seed`` initialises the weights from a private ``torch.Generator``, so two models built with the
    same config and seed are identical whatever the global RNG state. ``seed=None`` uses the global
    RNG.

    NeMo RL counterpart: the Hugging Face causal LM that the policy worker trains; this class has no
    tokenizer or checkpoint format of its own.
    """

    def __init__(self, config: PolicyConfig, seed: int | None = 0) -> None:
        super().__init__()
        if not isinstance(config, PolicyConfig):
            raise TypeError(f"config must be a PolicyConfig, got {type(config).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        causal = torch.tril(torch.ones(config.max_seq_len, config.max_seq_len, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int | None = 0) -> None:
        """Normal(0, init_std) weights and embeddings, zero biases, unit LayerNorm gains."""
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        std = self.config.init_std
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                elif isinstance(module, (nn.Linear, nn.Embedding)):
                    w = torch.randn(module.weight.shape, generator=gen, dtype=torch.float32) * std
                    module.weight.copy_(w.to(module.weight))
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_emb.weight.dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, S], got shape {tuple(input_ids.shape)}")
        B, S = input_ids.shape
        if S > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {S} exceeds PolicyConfig.max_seq_len={self.config.max_seq_len}"
            )
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.config.vocab_size}) (the vocab size)")
        pos = torch.arange(S, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)[None]
        for block in self.blocks:
            x = block(x, self.causal[:S, :S])
        return self.ln_f(x) @ self.tok_emb.weight.T

    def describe(self) -> str:
        """One line: the config and the parameter count."""
        return f"TinyCausalLM({', '.join(f'{k}={v}' for k, v in asdict(self.config).items())}; " \
               f"{count_parameters(self):,} parameters)"


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def make_reference(policy: nn.Module) -> nn.Module:
    """A frozen deep copy of ``policy``: eval mode, ``requires_grad=False``.

    NeMo RL keeps the reference model (``init_reference_model=True``, nemo_rl/algorithms/dpo.py:285)
    inside the policy worker; here it is a separate copy whose log-probs fill
    ``reference_policy_logprobs``.
    """
    if not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    ref = copy.deepcopy(policy)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
