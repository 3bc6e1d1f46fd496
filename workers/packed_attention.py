"""Attention over packed sequences without flash-attn: each sequence attends causally to itself, from the
packed row's sequence boundaries, never through a ``[T, T]`` mask.

``use_remove_padding`` packs a micro-batch's sequences into one row. Under flash_attention_2, transformers
runs its varlen kernels from the position ids. Under sdpa it builds a dense block-diagonal ``[T, T]`` mask
instead: exact, but memory and attention grow with the packed length squared (a micro-batch of 8 x 1,239
tokens spends ~8x the attention FLOPs of its sequences). So a model loaded for packing with sdpa gets the
implementation ``PACKED_SDPA`` (``implementation``): in a packed forward (``packed``), it runs PyTorch's own
varlen flash-attention kernel (``torch.nn.attention.varlen``: torch >= 2.10, CUDA from Ampere on, bf16/fp16,
once it has agreed with sdpa on a small forward and backward), or else sdpa once per sequence; every other
forward (padded rows, KV caches, 4D masks) is transformers' sdpa, masks included. Exact against the padded
forward: tests/workers/test_remove_padding.py (CPU), and tests/gpu/test_packed_attention_cuda.py for the
CUDA kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect

import torch
import torch.nn.functional as F
from transformers import masking_utils
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PACKED_SDPA = "mopd_packed_sdpa"

_PACKING = contextvars.ContextVar("mopd_packing", default=False)


def implementation(requested: str, remove_padding: bool) -> str:
    """The attention implementation to load a model with: ``PACKED_SDPA`` for sdpa when packing."""
    if remove_padding and requested == "sdpa":
        _register()
        return PACKED_SDPA
    return requested


def is_sdpa(module) -> bool:
    """Whether the module's attention is sdpa (with or without the packed path)."""
    return getattr(module.config, "_attn_implementation", None) in ("sdpa", PACKED_SDPA)


def boundary_kwargs(module, lengths: torch.Tensor) -> dict:
    """What a packed forward of sequences of ``lengths`` passes to the model for ``PACKED_SDPA``: the
    cumulative boundaries and longest length (transformers' flash-attention keyword names). Empty for
    other implementations (flash-attention finds the boundaries from the position ids)."""
    if getattr(module.config, "_attn_implementation", None) != PACKED_SDPA:
        return {}
    bounds = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lengths.max())  # one host sync per micro-batch
    return dict(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)


@contextlib.contextmanager
def packed():
    """Around a packed forward: ``PACKED_SDPA`` builds no mask (its attention takes the boundaries)."""
    token = _PACKING.set(True)
    try:
        yield
    finally:
        _PACKING.reset(token)


def _attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention interface: ``query [1, Hq, T, D]``, ``key/value [1, Hkv, T, D]`` ->
    ``([1, T, Hq, D], None)``."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        if _PACKING.get():
            raise RuntimeError(
                f"{type(module).__name__}: a packed forward reached attention without its sequence "
                "boundaries (cu_seq_lens_q); this model does not pass attention kwargs through"
            )
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError(
            f"{type(module).__name__}: sliding-window attention is not supported by {PACKED_SDPA}; "
            "use actor_rollout_ref.model.use_remove_padding=false or flash_attention_2"
        )
    if module.training and kwargs.get("dropout", 0.0):
        raise ValueError(f"{type(module).__name__}: attention dropout is not supported by {PACKED_SDPA}")
    scale, groups = kwargs.get("scaling"), query.shape[1] // key.shape[1]
    if _varlen_usable(query):
        out = _VARLEN(
            query[0].transpose(0, 1),
            key[0].transpose(0, 1),
            value[0].transpose(0, 1),
            bounds,
            kwargs["max_length_q"],
            scale,
            groups,
        )
        return out.unsqueeze(0), None
    return _per_sequence(query, key, value, bounds.tolist(), scale, groups).transpose(1, 2).contiguous(), None


def _per_sequence(query, key, value, edges: list[int], scale, groups: int) -> torch.Tensor:
    """Causal sdpa over each ``[edges[i], edges[i + 1])`` column range of ``[1, H, T, D]`` tensors."""
    return torch.cat(
        [
            F.scaled_dot_product_attention(
                query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scale, enable_gqa=groups > 1
            )
            for a, b in zip(edges[:-1], edges[1:])
        ],
        2,
    )


def _mask(*args, **kwargs):
    """transformers' mask interface: none in a packed forward, sdpa's otherwise."""
    if _PACKING.get():
        return None
    return masking_utils.sdpa_mask(*args, **kwargs)


def _varlen_kernel():
    """``torch.nn.attention.varlen.varlen_attn`` as ``(q, k, v [T, H, D], bounds, longest, scale, groups)``,
    causal; ``None`` where torch has none with a causal window and a scale (before 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params or "scale" not in params:
        return None
    native_gqa = "enable_gqa" in params

    def run(q, k, v, bounds, longest, scale, groups):
        extra = {}
        if groups > 1 and native_gqa:
            extra["enable_gqa"] = True
        elif groups > 1:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        return varlen_attn(q, k, v, bounds, bounds, longest, longest, scale=scale, window_size=(-1, 0), **extra)

    return run


_VARLEN = _varlen_kernel()
_VARLEN_CHECKED: dict[tuple[str, torch.dtype], bool] = {}


def _varlen_usable(query: torch.Tensor) -> bool:
    """The varlen kernel for this device and dtype: CUDA from Ampere on (PyTorch's flash kernels), bf16/fp16,
    and once per process a small forward and backward that must agree with sdpa per sequence."""
    if _VARLEN is None or not query.is_cuda or query.dtype not in (torch.bfloat16, torch.float16):
        return False
    key = (str(query.device), query.dtype)
    if key not in _VARLEN_CHECKED:
        _VARLEN_CHECKED[key] = torch.cuda.get_device_capability(query.device)[0] >= 8 and varlen_agrees(
            query.device, query.dtype
        )
    return _VARLEN_CHECKED[key]


def check_at_init(device: torch.device, dtype: torch.dtype) -> bool:
    """Run the varlen kernel's once-per-process check now, when the worker builds its models, rather than
    inside the first packed forward: there it would run under gradient checkpointing's recomputation (its
    own small backward amid the model's) and its cost would land in the first step. ``False`` where the
    kernel cannot apply (CPU, float32, no kernel) without running anything."""
    if _VARLEN is None or device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    return _varlen_usable(torch.empty(0, device=device, dtype=dtype))


def varlen_agrees(device, dtype, kernel=None) -> bool:
    """Whether ``kernel`` (default the varlen kernel) gives sdpa-per-sequence's outputs and gradients on three
    causal sequences with grouped key/value heads; if not, or if it raises, one line says so."""
    kernel = kernel or _VARLEN
    g = torch.Generator().manual_seed(0)
    edges, heads, kv_heads, dim = [0, 5, 6, 18], 4, 2, 64
    q, k, v = (
        torch.randn(edges[-1], h, dim, generator=g).to(device, dtype).requires_grad_()
        for h in (heads, kv_heads, kv_heads)
    )
    bounds = torch.tensor(edges, dtype=torch.int32, device=device)
    try:
        with torch.enable_grad():
            out = kernel(q, k, v, bounds, 12, dim**-0.5, heads // kv_heads)
            got = (out, *torch.autograd.grad(out.float().square().sum(), (q, k, v)))
            ref = _per_sequence(
                *(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), edges, dim**-0.5, heads // kv_heads
            )[0].transpose(0, 1)
            want = (ref, *torch.autograd.grad(ref.float().square().sum(), (q, k, v)))
    except Exception as error:  # noqa: BLE001 -- any failure means: do not use it; said below
        print(
            f"[mopd] {PACKED_SDPA}: torch's varlen attention failed its check on {device} ({type(error).__name__}: "
            f"{str(error)[:200]}); packed sequences attend per sequence with sdpa instead",
            flush=True,
        )
        return False
    gaps = [
        float((a - b).norm() / b.norm().clamp(min=1e-6))
        for a, b in ((a.detach().float(), b.detach().float()) for a, b in zip(got, want))
    ]
    if max(gaps) > (1e-4 if dtype == torch.float32 else 0.03):
        print(
            f"[mopd] {PACKED_SDPA}: torch's varlen attention disagrees with sdpa on {device} (relative gaps "
            f"{', '.join(f'{x:.1e}' for x in gaps)}); packed sequences attend per sequence with sdpa instead",
            flush=True,
        )
        return False
    return True


def _register() -> None:
    ALL_ATTENTION_FUNCTIONS.register(PACKED_SDPA, _attention)
    masking_utils.ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, _mask)
