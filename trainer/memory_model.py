"""Sizes of a dense decoder model read from its ``config.json`` alone, and the per-token byte counts the
memory plan (``trainer/memory_plan.py``) builds its phases from. No weights, tokenizer or GPU needed.

Every figure is a formula of the shape, so how it grows is explicit:

- parameters: ``V·H`` (×2 untied) + ``L·(H·(q + 2·kv) + q·H + 3·H·I + 2·H + 2·d)`` + ``H``;
- KV cache per token: ``2 · L · kv_heads · head_dim · bytes`` (grows with tokens, never with the vocabulary);
- activations kept for backward per token and layer (flash/sdpa attention, no ``[T, T]`` scores):
  ``b·(6·H + 5·q + 5·kv + 4·I)`` — the two RMSNorms' inputs and outputs, q/k/v before and after their
  norms and rotary, the attention output, and the SwiGLU's gate, up, activation and product;
- one layer's transient working set in a no-grad forward per token: ``b·(3·I + 4·H + 2·q + 2·kv)``.

``q = heads · head_dim`` and ``kv = kv_heads · head_dim``; ``b`` is the compute dtype's bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mopd.common.errors import ConfigError, MissingFileError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        h = self.hidden
        attention = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h + 2 * self.head_dim  # + q/k norms
        return attention + 3 * h * self.intermediate + 2 * h  # SwiGLU MLP, two RMSNorms

    @property
    def root_params(self) -> int:
        """The FSDP root unit: embeddings, the LM head unless tied, the final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.root_params + self.layers * self.layer_params

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def saved_activation_bytes_per_token_layer(self, dtype_bytes: int) -> int:
        h, i = self.hidden, self.intermediate
        return dtype_bytes * (6 * h + 5 * self.q_dim + 5 * self.kv_dim + 4 * i)

    def forward_workspace_bytes_per_token(self, dtype_bytes: int) -> int:
        h, i = self.hidden, self.intermediate
        return dtype_bytes * (3 * i + 4 * h + 2 * self.q_dim + 2 * self.kv_dim)


_FIELDS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
}


def shape_from_config(config: dict, source: str) -> ModelShape:
    """A ``ModelShape`` from a parsed ``config.json`` (``text_config`` of a multimodal config if present)."""
    config = config.get("text_config") or config
    missing = [name for name in _FIELDS.values() if not isinstance(config.get(name), int)]
    if missing:
        raise ConfigError(
            f"{source}: config.json lacks {', '.join(missing)}; the memory plan knows dense decoder "
            "models (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size)"
        )
    if config.get("num_experts") or config.get("num_local_experts"):
        raise ConfigError(
            f"{source}: a mixture-of-experts config.json; the memory plan knows dense decoder models only"
        )
    values = {key: config[name] for key, name in _FIELDS.items()}
    heads = values["heads"]
    return ModelShape(
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or values["hidden"] // heads),
        tied=bool(config.get("tie_word_embeddings", False)),
        **values,
    )


def read_model_shape(path: str, flag: str = "actor_rollout_ref.model.path") -> ModelShape:
    """The shape of the model at ``path`` (a local folder, or a hub id whose ``config.json`` is fetched alone)."""
    from mopd.common.models import resolve_model_path

    resolved = resolve_model_path(path, flag)
    local = Path(resolved)
    if local.is_dir():
        file = local / "config.json"
        if not file.is_file():
            raise MissingFileError(f"{flag}={path}: {file} is missing (the memory plan reads the model's config.json)")
    elif os.path.isabs(resolved) or resolved.startswith("."):
        raise MissingFileError(f"{flag}={path}: no such folder")
    else:
        file = _hub_config(resolved, flag)
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, ValueError) as exc:
        raise MissingFileError(f"{flag}={path}: cannot read {file}: {exc}") from None
    return shape_from_config(config, f"{flag}={path}")


def _hub_config(repo_id: str, flag: str) -> str:
    """The hub's ``config.json`` only (a few KB; the cached copy when there is one)."""
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, "config.json")
    except Exception as exc:  # offline, unknown repo, gated: all say the same to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MissingFileError(
            f"{flag}={repo_id}: cannot get its config.json ({first}); give a local folder "
            "holding the model's config.json"
        ) from None
