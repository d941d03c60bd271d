"""Memory accounting for the Memory Optimization page: a memory model and the meters that check it.

Model
    :func:`parameter_count` (exact, for a :class:`rlref.lab.TinyCausalLM` config),
    :func:`activation_bytes` (the bytes autograd saves for the backward pass of one forward + log-prob
    pass, exact for that model, with or without activation checkpointing) and
    :func:`estimate_memory` (parameters + gradients + AdamW's two states + activations).
Meters
    :class:`SavedTensorMeter` (bytes saved for backward, via ``torch.autograd.graph.saved_tensors_hooks``),
    :class:`LiveTensorMeter` (live and peak bytes of the tensors created inside a block, via a
    ``TorchDispatchMode``; works on CPU, where PyTorch keeps no allocator statistics),
    :func:`tensor_bytes`, :func:`optimizer_state_bytes`, and :func:`cuda_peak_bytes`
    (``torch.cuda.max_memory_allocated``; GPU only).
KV cache of the generation engine
    :func:`kv_cache_bytes_per_token` (``2 L n_kv d_head b``), :func:`kv_cache_tokens` (how many tokens
    fit in vLLM's ``gpu_memory_utilization`` share after the weights) and :func:`capture_kv` (the K and
    V tensors a lab model's forward computes: the cache a decoder would keep).
Padding
    :func:`forward_tokens` (the model's forward with optional per-token positions and segment ids, so
    several sequences can share one packed row, and optional activation checkpointing per block),
    :func:`first_fit_decreasing`, :func:`pack_sequences`, :func:`dynamic_microbatches`,
    :func:`pad_batch` and :func:`padding_fraction`.

NeMo RL counterparts (at commit 7ea279abf): ``policy.dtensor_cfg.activation_checkpointing``,
``policy.sequence_packing.*`` (``algorithm``: ``first_fit_decreasing`` is one of its four packers) and
``policy.dynamic_batching.*`` (``train_mb_tokens``, ``sequence_length_round``). The code here is the
lab's own; nothing imports ``nemo_rl``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "MemoryEstimate", "parameter_count", "activation_bytes", "estimate_memory",
    "SavedTensorMeter", "LiveTensorMeter", "tensor_bytes", "optimizer_state_bytes", "cuda_peak_bytes",
    "forward_tokens", "first_fit_decreasing", "PackedBatch", "pack_sequences", "dynamic_microbatches",
    "pad_batch", "padding_fraction", "kv_cache_bytes_per_token", "kv_cache_tokens", "capture_kv",
]


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _config_shape(config) -> tuple[int, int, int, int, int]:
    """``(L, D, H, F, V)`` of a PolicyConfig-like object."""
    for name in ("n_layers", "d_model", "n_heads", "vocab_size"):
        if not hasattr(config, name):
            raise TypeError(f"config must be a rlref.lab.PolicyConfig, got {type(config).__name__}")
    ff = getattr(config, "ff_dim", None) or 4 * config.d_model
    return config.n_layers, config.d_model, config.n_heads, ff, config.vocab_size


# ==================================================================================================
# The model
# ==================================================================================================


def parameter_count(config) -> int:
    """Parameters of a :class:`rlref.lab.TinyCausalLM` (embedding tied with the output projection).

    ``N = V D + T D + L (4 D^2 + 4 D + 2 D F + F + D + 4 D) + 2 D`` with ``T = max_seq_len``: token and
    position embeddings; per layer the QKV (``3D^2 + 3D``) and output (``D^2 + D``) projections, the
    MLP (``2DF + F + D``) and two LayerNorms (``4D``); the final LayerNorm (``2D``).
    """
    L, D, _, F, V = _config_shape(config)
    T = config.max_seq_len
    per_layer = 4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D
    return V * D + T * D + L * per_layer + 2 * D


def activation_bytes(config, batch_size: int, seq_len: int, dtype_bytes: int = 4,
                     checkpointing: bool = False) -> int:
    """Bytes autograd keeps for backward after ``next_token_logprobs(model(ids), ids)`` (deduplicated).

    With ``e = dtype_bytes``, ``B`` rows of ``S`` tokens, width ``D``, ``H`` heads, MLP width ``F``,
    vocabulary ``V`` and ``L`` layers, each layer saves (the inventory :class:`SavedTensorMeter` lists)::

        a_layer = e (8 B S D + 2 B S F + B H S^2 + 4 B S) + S^2

    - ``8 BSD``: the block input, LN1 output, Q, K^T and V (copies made for the batched matmuls), the
      attention output entering the projection, the residual stream entering LN2, and LN2's output;
    - ``2 BSF``: the MLP pre-activation (kept by GELU) and the GELU output (kept by the second linear);
    - ``B H S^2``: the softmax probabilities (kept by softmax and by ``probs @ V``): quadratic in S;
    - ``4 BS``: mean and reciprocal std of the two LayerNorms; ``S^2`` bytes: the boolean causal mask.

    The head adds ``e (2 B S D + 2 B S)`` (final LayerNorm input, output and statistics),
    ``e B (S-1) V`` (the log-softmax output) and ``8 B S + 8 S`` (int64 token and position ids). With
    ``checkpointing=True`` (each block under ``torch.utils.checkpoint``) a layer keeps only its input,
    ``e B S D``, and recomputes the rest during backward. Parameters are not counted (see
    :func:`estimate_memory`).
    """
    L, D, H, F, V = _config_shape(config)
    B = _check_int("batch_size", batch_size)
    S = _check_int("seq_len", seq_len)
    e = _check_int("dtype_bytes", dtype_bytes)
    if checkpointing:
        per_layer = e * B * S * D
    else:
        per_layer = e * (8 * B * S * D + 2 * B * S * F + B * H * S * S + 4 * B * S) + S * S
    head = e * (2 * B * S * D + 2 * B * S) + e * B * (S - 1) * V + 8 * B * S + 8 * S
    return L * per_layer + head


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a training step's memory (see :func:`estimate_memory`)."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int

    @property
    def static(self) -> int:
        """Parameters + gradients + optimizer states: what stays allocated between steps."""
        return self.parameters + self.gradients + self.optimizer_states

    @property
    def total(self) -> int:
        return self.static + self.activations

    def as_dict(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients,
                "optimizer_states": self.optimizer_states, "activations": self.activations}


def estimate_memory(config, batch_size: int, seq_len: int, param_bytes: int = 4, grad_bytes: int = 4,
                    optimizer_state_bytes: int = 4, optimizer_states: int = 2,
                    activation_dtype_bytes: int = 4, checkpointing: bool = False) -> MemoryEstimate:
    """``N (b_p + b_g + k b_o) + A(B, S)``: the memory model of one training step.

    ``N`` = :func:`parameter_count`, ``k`` = ``optimizer_states`` (AdamW keeps two, ``exp_avg`` and
    ``exp_avg_sq``), ``A`` = :func:`activation_bytes`. Byte sizes default to fp32 everywhere (the lab);
    a bf16 run with fp32 master weights and states, as NeMo RL's DTensor path loads them, changes
    ``activation_dtype_bytes`` only.
    """
    n = parameter_count(config)
    for name, v in (("param_bytes", param_bytes), ("grad_bytes", grad_bytes),
                    ("optimizer_state_bytes", optimizer_state_bytes)):
        _check_int(name, v)
    _check_int("optimizer_states", optimizer_states, 0)
    return MemoryEstimate(
        parameters=n * param_bytes, gradients=n * grad_bytes,
        optimizer_states=n * optimizer_states * optimizer_state_bytes,
        activations=activation_bytes(config, batch_size, seq_len, activation_dtype_bytes, checkpointing),
    )


# ==================================================================================================
# Meters
# ==================================================================================================


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared storage counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected tensors, got {type(t).__name__}")
        seen.setdefault(_storage_key(t), t.untyped_storage().nbytes())
    return sum(seen.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (AdamW: ``exp_avg``, ``exp_avg_sq``, ``step``)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor))


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward inside a ``with`` block.

    Every tensor passed to ``save_for_backward`` goes through the pack hook of
    ``torch.autograd.graph.saved_tensors_hooks``; the meter records each distinct storage once and
    skips the storages of ``exclude`` (pass the model's parameters and buffers: they are counted as
    parameters, not activations). After the block: ``bytes``, ``count`` (distinct storages) and
    ``inventory`` (a Counter of ``(shape, dtype)`` of the first tensor seen on each storage).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {_storage_key(t) for t in exclude}
        self._seen: dict[int, int] = {}
        self.inventory: Counter = Counter()
        self._hooks = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen[key] = t.untyped_storage().nbytes()
            self.inventory[(tuple(t.shape), str(t.dtype).replace("torch.", ""))] += 1
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    @property
    def count(self) -> int:
        return len(self._seen)


class LiveTensorMeter(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created inside a ``with`` block (CPU or GPU).

    Every op's outputs pass through ``__torch_dispatch__``; the meter keeps a weak reference to each
    new storage and, after every op, drops the ones that were freed. ``live`` is the bytes still
    alive now, ``peak`` the maximum over all op boundaries: the analogue of
    ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the block, without the
    caching allocator's rounding and without scratch space an op frees before it returns. Storages of
    ``exclude`` (parameters, buffers, existing optimizer state) are never counted. Costs O(live
    tensors) per op: for small models only.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._exclude = {_storage_key(t) for t in exclude}
        self._refs: dict[int, tuple[StorageWeakRef, int]] = {}
        self.live = 0
        self.peak = 0
        self.ops = 0

    def mark(self) -> int:
        """Refresh and return ``live`` (drop storages freed since the last op)."""
        for key in [k for k, (ref, _) in self._refs.items() if ref.expired()]:
            del self._refs[key]
        self.live = sum(n for _, n in self._refs.values())
        self.peak = max(self.peak, self.live)
        return self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st._cdata
                if key not in self._exclude and key not in self._refs:
                    self._refs[key] = (StorageWeakRef(st), st.nbytes())
        self.ops += 1
        self.mark()
        return out


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str = "cuda") -> int:
    """``torch.cuda.max_memory_allocated`` during ``fn()`` minus the bytes allocated before it (GPU only)."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"cuda_peak_bytes needs an available CUDA device, got {device} "
                         f"(torch.cuda.is_available()={torch.cuda.is_available()})")
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# ==================================================================================================
# Forward with packing and checkpointing
# ==================================================================================================


def forward_tokens(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                   segment_ids: torch.Tensor | None = None, checkpointing: bool = False) -> torch.Tensor:
    """Logits of a :class:`rlref.lab.TinyCausalLM` for ``input_ids [B, S]``, packed or checkpointed if asked.

    - Without ``position_ids``/``segment_ids`` this is the model's own forward (bitwise equal).
    - ``position_ids [B, S]``: the position of each token inside its own sequence (restarts at 0 for
      every sequence of a packed row); ``segment_ids [B, S]``: which sequence a token belongs to
      (``-1`` for padding). A token attends to earlier tokens of its own segment only, so each packed
      sequence gets exactly the logits it would get alone (up to float rounding).
    - ``checkpointing=True`` runs every block under ``torch.utils.checkpoint(use_reentrant=False)``:
      only the block's input is saved, the block is recomputed during backward (NeMo RL:
      ``policy.dtensor_cfg.activation_checkpointing``).
    """
    for name in ("tok_emb", "pos_emb", "blocks", "ln_f", "causal"):
        if not hasattr(model, name):
            raise TypeError(f"model must be a rlref.lab.TinyCausalLM, got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError("input_ids must be an integer [B, S] tensor")
    B, S = input_ids.shape
    if S > model.config.max_seq_len:
        raise ValueError(f"sequence length {S} exceeds PolicyConfig.max_seq_len={model.config.max_seq_len}")
    if (position_ids is None) != (segment_ids is None):
        raise ValueError("give both position_ids and segment_ids (a packed batch) or neither")
    if position_ids is None:
        x = model.tok_emb(input_ids) + model.pos_emb(torch.arange(S, device=input_ids.device))[None]
        mask = model.causal[:S, :S]

        def run_block(block, x):
            return block(x, mask)
    else:
        for name, t in (("position_ids", position_ids), ("segment_ids", segment_ids)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (B, S):
                raise ValueError(f"{name} must be a [B, S] = {(B, S)} tensor")
        if int(position_ids.min()) < 0 or int(position_ids.max()) >= model.config.max_seq_len:
            raise ValueError("position_ids must lie in [0, max_seq_len)")
        x = model.tok_emb(input_ids) + model.pos_emb(position_ids)
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        real = (segment_ids >= 0)[:, :, None]
        # Padding rows attend to themselves only, so no softmax row is all -inf (no NaN).
        eye = torch.eye(S, dtype=torch.bool, device=input_ids.device)[None]
        mask = ((same & real & model.causal[:S, :S][None]) | eye)[:, None]

        def run_block(block, x):
            return block(x, mask)
    for block in model.blocks:
        x = _checkpoint(run_block, block, x, use_reentrant=False) if checkpointing else run_block(block, x)
    return model.ln_f(x) @ model.tok_emb.weight.T


# ==================================================================================================
# Packing, dynamic batching, padding
# ==================================================================================================


def _check_lengths(lengths: Sequence[int], capacity: int | None = None) -> list[int]:
    out = [int(n) for n in lengths]
    if not out:
        raise ValueError("lengths is empty")
    if any(isinstance(n, bool) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive ints, got {list(lengths)}")
    if capacity is not None and max(out) > capacity:
        raise ValueError(f"a sequence of length {max(out)} does not fit the capacity {capacity}")
    return out


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of sequence indices, each with total length <= ``capacity`` (first-fit decreasing).

    Sequences are taken longest first and each goes into the first bin with room, else a new bin.
    FFD uses at most ``11/9 OPT + 6/9`` bins (Dosa 2007). NeMo RL's
    ``policy.sequence_packing.algorithm`` offers a packer of this name among four.
    """
    _check_int("capacity", capacity)
    lengths = _check_lengths(lengths, capacity)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


@dataclass(frozen=True)
class PackedBatch:
    """Packed rows: ``input_ids``, ``position_ids``, ``segment_ids`` (``-1`` = padding), all ``[R, C]``,
    and ``bins`` (the sequence indices in each row, in order)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    bins: list[list[int]]

    def unpack(self, values: torch.Tensor, index: int) -> torch.Tensor:
        """The entries of ``values [R, C, ...]`` that belong to sequence ``index``, in order."""
        for r, b in enumerate(self.bins):
            if index in b:
                return values[r][self.segment_ids[r] == index]
        raise ValueError(f"sequence {index} is in no bin")


def pack_sequences(sequences: Sequence[Sequence[int]], capacity: int, pad_id: int = 0,
                   bins: list[list[int]] | None = None) -> PackedBatch:
    """Concatenate sequences into rows of ``capacity`` tokens (bins from :func:`first_fit_decreasing`)."""
    lengths = _check_lengths([len(s) for s in sequences], capacity)
    bins = first_fit_decreasing(lengths, capacity) if bins is None else bins
    R = len(bins)
    ids = torch.full((R, capacity), pad_id, dtype=torch.long)
    pos = torch.zeros((R, capacity), dtype=torch.long)
    seg = torch.full((R, capacity), -1, dtype=torch.long)
    for r, b in enumerate(bins):
        at = 0
        for i in b:
            n = lengths[i]
            if at + n > capacity:
                raise ValueError(f"bin {r} overflows the capacity {capacity}")
            ids[r, at:at + n] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            pos[r, at:at + n] = torch.arange(n)
            seg[r, at:at + n] = i
            at += n
    return PackedBatch(ids, pos, seg, [list(b) for b in bins])


def dynamic_microbatches(lengths: Sequence[int], train_mb_tokens: int,
                         sequence_length_round: int = 1) -> list[list[int]]:
    """Micro-batches of sequence indices whose padded size ``rows x round_up(max length)`` <= the budget.

    Sequences are sorted longest first and a micro-batch grows while ``(n + 1) * round_up(longest)``
    stays within ``train_mb_tokens``: short sequences travel in large micro-batches, long ones in
    small ones, and each is padded only to its own longest member (rounded up to a multiple of
    ``sequence_length_round``). NeMo RL: ``policy.dynamic_batching.{train_mb_tokens,
    sequence_length_round}``.
    """
    _check_int("train_mb_tokens", train_mb_tokens)
    _check_int("sequence_length_round", sequence_length_round)
    lengths = _check_lengths(lengths)

    def rounded(n: int) -> int:
        return -(-n // sequence_length_round) * sequence_length_round

    if rounded(max(lengths)) > train_mb_tokens:
        raise ValueError(f"the longest sequence ({rounded(max(lengths))} tokens after rounding) exceeds "
                         f"train_mb_tokens={train_mb_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1]
            width = rounded(lengths[cur[0]])  # the longest member comes first
            if (len(cur) + 1) * width <= train_mb_tokens:
                cur.append(i)
                continue
        batches.append([i])
    return batches


def pad_batch(sequences: Sequence[Sequence[int]], width: int | None = None, pad_id: int = 0):
    """``(input_ids [B, W], token_mask [B, W])``: right-padded to ``width`` (default: the longest)."""
    lengths = _check_lengths([len(s) for s in sequences])
    W = max(lengths) if width is None else _check_int("width", width)
    if max(lengths) > W:
        raise ValueError(f"a sequence of length {max(lengths)} does not fit width {W}")
    ids = torch.full((len(lengths), W), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), W), dtype=torch.float32)
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1.0
    return ids, mask


def padding_fraction(real_tokens: int, shapes: Iterable[tuple[int, int]]) -> float:
    """``1 - real_tokens / sum(rows * width)``: the share of computed positions that are padding."""
    shapes = list(shapes)
    if not shapes:
        raise ValueError("shapes is empty")
    total = sum(int(r) * int(w) for r, w in shapes)
    if real_tokens < 0 or real_tokens > total:
        raise ValueError(f"real_tokens={real_tokens} must lie in [0, {total}] (the computed positions)")
    return 1.0 - real_tokens / total


# ==================================================================================================
# KV cache of the generation engine
# ==================================================================================================

#: Bytes per element of vLLM's KV cache for NeMo RL's ``policy.generation.vllm_cfg.kv_cache_dtype``
#: (nemo_rl/models/generation/vllm/config.py:69): "auto" keeps the model's dtype (bf16 here).
KV_CACHE_DTYPE_BYTES = {"auto": 2, "fp8": 1, "fp8_e4m3": 1}


def kv_cache_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, dtype_bytes: int = 2,
                             tensor_parallel_size: int = 1) -> int:
    """Bytes of KV cache one token occupies on one GPU: ``2 * L * n_kv * d_head * b``.

    The 2 is K and V; ``n_kv`` is the number of key/value heads (fewer than query heads under GQA).
    Tensor parallelism splits the KV heads over ``tensor_parallel_size`` GPUs, each GPU keeping at least
    one (vLLM replicates them when TP exceeds ``n_kv``). vLLM's KV cache dtype is NeMo RL's
    ``policy.generation.vllm_cfg.kv_cache_dtype``: "auto" (the model's dtype) or fp8 (1 byte).
    """
    for name, v in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                    ("dtype_bytes", dtype_bytes), ("tensor_parallel_size", tensor_parallel_size)):
        _check_int(name, v)
    if n_kv_heads % tensor_parallel_size and tensor_parallel_size % n_kv_heads:
        raise ValueError(f"tensor_parallel_size {tensor_parallel_size} must divide or be a multiple of "
                         f"n_kv_heads {n_kv_heads}")
    heads_per_gpu = max(1, n_kv_heads // tensor_parallel_size)
    return 2 * n_layers * heads_per_gpu * head_dim * dtype_bytes


def kv_cache_tokens(gpu_bytes: int, gpu_memory_utilization: float, weight_bytes: int,
                    bytes_per_token: int, other_bytes: int = 0) -> int:
    """Tokens of KV cache that fit: ``floor((u * M - W - other) / bytes_per_token)``, 0 if none.

    ``u`` is NeMo RL's ``policy.generation.vllm_cfg.gpu_memory_utilization`` (vLLM's share of the GPU's
    ``M`` bytes, passed to vLLM at nemo_rl/models/generation/vllm/vllm_worker.py:323,579), ``W`` the
    weights on this GPU; ``other`` is what vLLM also reserves (activation peak, CUDA graphs), which it
    measures at start-up. An upper bound when ``other`` is 0.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    for name, v in (("gpu_bytes", gpu_bytes), ("bytes_per_token", bytes_per_token)):
        _check_int(name, v)
    for name, v in (("weight_bytes", weight_bytes), ("other_bytes", other_bytes)):
        _check_int(name, v, minimum=0)
    free = int(gpu_memory_utilization * gpu_bytes) - weight_bytes - other_bytes
    return max(0, free // bytes_per_token)


def capture_kv(model: nn.Module, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model`` (a :class:`rlref.lab.TinyCausalLM`) on ``input_ids`` and return each block's (K, V).

    K and V are split from each attention block's fused ``qkv`` projection, shaped ``[B, H, S, d_head]``
    and copied: the tensors a decoder's KV cache holds for these tokens (the lab has no GQA, so
    ``n_kv = H``).
    """
    blocks = [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "n_heads")]
    if not blocks:
        raise TypeError(f"model must be a rlref.lab.TinyCausalLM (attention blocks with .qkv), got "
                        f"{type(model).__name__}")
    cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(block):
        def hook(_module, _inputs, out):
            B, S, three_d = out.shape
            D, H = three_d // 3, block.n_heads
            _, k, v = out.detach().split(D, dim=-1)
            cache.append(tuple(t.reshape(B, S, H, D // H).transpose(1, 2).contiguous() for t in (k, v)))
        return hook

    handles = [b.qkv.register_forward_hook(keep(b)) for b in blocks]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return cache
