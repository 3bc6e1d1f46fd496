"""The shipped tokenizer: rebuildable, exact round trips, Qwen-style chat template."""

import json

from mopd.embedded.tiny_tokenizer import TOKENIZER_DIR, load_tiny_tokenizer, write_tiny_tokenizer


def test_shipped_files_match_a_fresh_build(tmp_path):
    write_tiny_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((TOKENIZER_DIR / name).read_text()), name


def test_round_trip_of_any_text():
    tok = load_tiny_tokenizer()
    for text in ["12+34=46", "héllo ✓ 你好\n\n\tend", "<think>x</think>\n\n\\boxed{3}", ""]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_special_tokens_and_chat_template():
    tok = load_tiny_tokenizer()
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.padding_side == "left"
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.decode(ids, skip_special_tokens=True) == "system\nS\nuser\nU\nassistant\n"
