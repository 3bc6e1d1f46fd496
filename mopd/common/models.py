"""Loading Hugging Face models and tokenizers, and picking a device and dtype: one home for the trainer's
workers (``workers/model_utils.py`` adds FSDP2 and the process group on top) and the analysis tools.

``embedded`` names the shipped tiny base model (``datasets/embedded/base_model``). Errors name the config
key or command-line flag the value came from (``flag``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mopd.common.errors import ConfigError, MissingFileError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_DIR = PROJECT_ROOT / "datasets" / "embedded"
EMBEDDED_MODEL = EMBEDDED_DIR / "base_model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str | None, flag: str = "actor_rollout_ref.model.path") -> str | None:
    """``embedded`` -> the shipped tiny base model's folder; anything else (a local dir or a hub id) as is."""
    if path == "embedded":
        if not (EMBEDDED_MODEL / "config.json").exists():
            raise MissingFileError(
                f"{flag}=embedded: {EMBEDDED_MODEL} is missing; create it with "
                "`python scripts/make_embedded_default.py`"
            )
        return str(EMBEDDED_MODEL)
    return path


def pick_device(setting: str, local_rank: int = 0, flag: str = "trainer.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` (device ``local_rank`` modulo the visible count) | ``cuda:N``."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not (setting in ("auto", "cuda") or setting.startswith("cuda:")):
        raise ConfigError(f"{flag} must be auto, cpu, cuda or cuda:N, got {setting!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag}={setting} but no CUDA device is available; use {flag}=cpu")
    index = int(setting.split(":", 1)[1]) if ":" in setting else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def pick_dtype(setting: str, device: torch.device, flag: str = "actor_rollout_ref.model.dtype") -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 on CPU."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if setting not in DTYPES:
        raise ConfigError(f"{flag} must be auto or one of {sorted(DTYPES)}, got {setting!r}")
    return DTYPES[setting]


def _cannot_load(what: str, path: str, flag: str, exc: Exception) -> MissingFileError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return MissingFileError(
        f"{flag}={path}: cannot load the {what} (not a model folder, or a hub id that "
        f"cannot be reached from here): {first}"
    )


def load_tokenizer(path: str, trust_remote_code: bool = False, flag: str = "actor_rollout_ref.model.path"):
    """Left padding (generation appends on the right), and eos as the pad token when there is none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # transformers: not found, cannot connect, not a model folder
        raise _cannot_load("tokenizer", path, flag, exc) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str,
    *,
    dtype: torch.dtype,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device: torch.device | None = None,
    flag: str = "actor_rollout_ref.model.path",
):
    """``AutoModelForCausalLM`` in ``dtype``; ``attn_implementation=None`` lets transformers choose."""
    from transformers import AutoModelForCausalLM

    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        raise _cannot_load("model", path, flag, exc) from None
    if device is not None:
        model.to(device)
    return model
