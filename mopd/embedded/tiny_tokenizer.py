"""The project's own tiny tokenizer: byte-level, no merges, Qwen-style chat template.

Every string round-trips exactly (any UTF-8 text is a sequence of byte tokens), so it works on real
benchmark text as well as on the embedded task, and it needs nothing from a model hub. The files in
``mopd/embedded/assets/tiny_tokenizer`` are produced by ``python -m mopd.embedded.tiny_tokenizer`` (deterministic; a test
checks the shipped files against a fresh build).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"
PAD, BOS_CHAT, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS_CHAT, EOS]
THINK_TOKENS = ["<think>", "</think>"]  # ordinary (not special) added tokens, as in Qwen3

# Qwen-style ChatML; enable_thinking=false pre-fills an empty think block, as Qwen3's template does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def _byte_alphabet() -> list[str]:
    """The printable stand-in character of each byte 0..255, in byte order (GPT-2's byte-level map)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    extra = 0
    chars = []
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` built from scratch (no files read)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    backend.add_tokens(THINK_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=1 << 20,
    )


def load_tiny_tokenizer(path: str | Path = TOKENIZER_DIR):
    """Load the shipped tokenizer with ``AutoTokenizer`` (as any local HF model dir would be)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def write_tiny_tokenizer(out_dir: str | Path = TOKENIZER_DIR) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_tokenizer().save_pretrained(str(out))
    # Normalise the JSON files so rebuilding gives byte-identical files.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        file = out / name
        if file.exists():
            data = json.loads(file.read_text())
            file.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(TOKENIZER_DIR))
    args = parser.parse_args()
    out = write_tiny_tokenizer(args.output_dir)
    tok = load_tiny_tokenizer(out)
    print(f"wrote {out} (vocabulary {len(tok)} tokens)")


if __name__ == "__main__":
    main()
