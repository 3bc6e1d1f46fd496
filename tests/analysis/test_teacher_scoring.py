"""score_teacher_contexts: token layout (chat / raw), batching exactness, truncation, pairing."""

from __future__ import annotations

import pytest
import torch

from mopd.analysis import scoring as S

QUESTION = "What is 12+30?"


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mopd.embedded.tiny_tokenizer import load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=264,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            initializer_range=0.2,
        )
    )
    path = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    torch.set_num_threads(1)
    model, tok = S.load_model_and_tokenizer(str(path), device=torch.device("cpu"), dtype=torch.float32)
    return model, tok


def variant(vid, context, spans=None, condition="solution", **extra):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": context}]
    return {
        "variant_id": vid,
        "condition": condition,
        "prompt_id": "p",
        "response_id": vid,
        "teacher_messages": messages,
        "peer_context_spans": spans or [],
        "assembled_context_text": context,
        "chat_template_kwargs": {},
        "sections_used": {},
        **extra,
    }


def target(rid, text, reward=1.0, **extra):
    return {
        "response_id": rid,
        "prompt_id": "p",
        "response_text": text,
        "reward": reward,
        "success": reward >= 1,
        **extra,
    }


def manual_log_probs(model, ids: list[int], n_response: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return lp[-n_response:]


def test_chat_layout_is_the_trainers(model_and_tokenizer):
    _, tok = model_and_tokenizer
    v = variant("v", QUESTION)
    e = S.encode_example(tok, v, target("v", "42"), raw_text=False, max_model_len=4096)
    text = tok.apply_chat_template(v["teacher_messages"], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert e.context_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert e.response_ids == tok("42", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert e.score_format == "chat" and e.appended_eos
    truncated = S.encode_example(tok, v, target("v", "42", response_truncated=True), raw_text=False, max_model_len=4096)
    assert truncated.response_ids == tok("42", add_special_tokens=False)["input_ids"]
    # a response as long as data.max_response_length hit the limit: no eos (the trainer had none either)
    n = len(tok("42", add_special_tokens=False)["input_ids"])
    at_limit = S.encode_example(tok, v, target("v", "42"), raw_text=False, max_model_len=4096, max_response_length=n)
    assert at_limit.response_ids == tok("42", add_special_tokens=False)["input_ids"] and not at_limit.appended_eos
    below = S.encode_example(tok, v, target("v", "42"), raw_text=False, max_model_len=4096, max_response_length=n + 1)
    assert below.appended_eos
    no_eos = S.encode_example(tok, v, target("v", "42"), raw_text=False, max_model_len=4096, append_eos=False)
    assert not no_eos.appended_eos
    thinking_off = S.encode_example(
        tok, v, target("v", "42"), raw_text=False, max_model_len=4096, chat_template_kwargs={"enable_thinking": False}
    )
    assert tok.decode(thinking_off.context_ids).endswith("<think>\n\n</think>\n\n")


def test_raw_layout_is_the_releases(model_and_tokenizer):
    _, tok = model_and_tokenizer
    v = variant("v", QUESTION)
    for e in (
        S.encode_example(tok, v, target("v", "42"), raw_text=True, max_model_len=4096),
        S.encode_example(tok, {**v, "score_format": "raw"}, target("v", "42"), raw_text=False, max_model_len=4096),
    ):
        assert e.score_format == "raw" and not e.appended_eos
        assert e.context_ids == tok(QUESTION, add_special_tokens=False)["input_ids"]  # no BOS in this tokenizer
        assert e.response_ids == tok("42", add_special_tokens=False)["input_ids"]


def test_batched_scores_equal_single_unpadded_forwards(model_and_tokenizer):
    model, tok = model_and_tokenizer
    contexts = [QUESTION, QUESTION + "\nCorrect solution:\n\n42", "Hi", QUESTION * 3]
    responses = ["42", "41 because", "4", "forty-two, surely"]
    pairs = [
        (variant(f"v{i}", c), target(f"v{i}", r, reward=float(i % 2)))
        for i, (c, r) in enumerate(zip(contexts, responses))
    ]
    batched, summary = S.score_pairs(model, tok, pairs, device=torch.device("cpu"), batch_size=3, progress=False)
    single, _ = S.score_pairs(model, tok, pairs, device=torch.device("cpu"), batch_size=1, progress=False)
    assert summary["scored"] == 4 and summary["batches"] == 2
    for b, s, (v, t) in zip(batched, single, pairs):
        e = S.encode_example(tok, v, t, raw_text=False, max_model_len=8192)
        ref = manual_log_probs(model, e.context_ids + e.response_ids, len(e.response_ids))
        assert b["teacher_score"] == pytest.approx(float(ref.mean()), abs=1e-5)
        assert b["teacher_seq_logprob"] == pytest.approx(float(ref.sum()), abs=1e-4)
        assert s["teacher_score"] == pytest.approx(b["teacher_score"], abs=1e-5)
        assert b["teacher_response_len"] == len(e.response_ids) and b["teacher_prompt_len"] == len(e.context_ids)
        assert b["variant_id"] == v["variant_id"] and b["reward"] == t["reward"] and not b["teacher_prompt_truncated"]


def test_without_logits_to_keep_the_full_logits_path_agrees(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    pairs = [(variant("a", QUESTION), target("a", "42")), (variant("b", "Hi"), target("b", "a longer answer"))]
    fast, _ = S.score_pairs(model, tok, pairs, device=torch.device("cpu"), batch_size=2, progress=False)
    monkeypatch.setattr(S, "_keep_arg", lambda m: None)
    slow, _ = S.score_pairs(model, tok, pairs, device=torch.device("cpu"), batch_size=2, progress=False)
    assert [r["teacher_score"] for r in fast] == pytest.approx([r["teacher_score"] for r in slow], abs=1e-5)


def test_truncation_cuts_peer_context_from_the_left_never_the_response(model_and_tokenizer):
    model, tok = model_and_tokenizer
    peer = "\nCorrect solution:\n\n" + "x" * 200
    context = QUESTION + peer + "\n\nCorrectly solve the original question."
    v = variant("v", context, [[len(QUESTION), len(QUESTION) + len(peer)]])
    t = target("v", "42")
    full = S.encode_example(tok, v, t, raw_text=False, max_model_len=100000)
    limit = len(full.context_ids) + len(full.response_ids) - 50
    e = S.encode_example(tok, v, t, raw_text=False, max_model_len=limit)
    assert e.dropped == 50 and len(e.context_ids) + len(e.response_ids) == limit
    assert e.response_ids == full.response_ids
    text = tok.decode(e.context_ids)
    # training's reprompt_truncation=left: the first 50 peer-context tokens go (the 20-byte label + 30 x's);
    # system prompt, question, template text and assistant header stay
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 12+30?xxx")
    assert text.endswith("x\n\nCorrectly solve the original question.<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("x") == 170
    # more than the peer context can give: plain left truncation, response still whole
    tight = S.encode_example(tok, v, t, raw_text=False, max_model_len=len(full.response_ids) + 5)
    assert len(tight.context_ids) == 5 and tight.context_ids == full.context_ids[-5:]
    raw = S.encode_example(tok, v, t, raw_text=True, max_model_len=20)
    assert raw.context_ids == tok(context, add_special_tokens=False)["input_ids"][-(20 - len(raw.response_ids)) :]
    assert S.encode_example(tok, v, target("v", "y" * 30), raw_text=False, max_model_len=20) is None
    rows, summary = S.score_pairs(
        model,
        tok,
        [(v, t), (v, target("v", "y" * 300))],
        device=torch.device("cpu"),
        max_model_len=limit,
        progress=False,
    )
    assert summary["skipped_response_too_long"] == 1 and summary["truncated"] == 1
    assert rows[0]["teacher_prompt_truncated"] and rows[0]["teacher_prompt_dropped_tokens"] == 50


def test_base_context_is_checked_against_the_student_prompt(model_and_tokenizer):
    model, tok = model_and_tokenizer
    v = variant("b", QUESTION, condition="base")
    v["student_input_text"] = tok.apply_chat_template(v["teacher_messages"], tokenize=False, add_generation_prompt=True)
    _, summary = S.score_pairs(model, tok, [(v, target("b", "42"))], device=torch.device("cpu"), progress=False)
    assert summary["base_context_equals_student_prompt"] == 1.0
    v["student_input_text"] = "something else"
    _, summary = S.score_pairs(model, tok, [(v, target("b", "42"))], device=torch.device("cpu"), progress=False)
    assert summary["base_context_equals_student_prompt"] == 0.0


def test_pairing():
    variants = [
        {"variant_id": f"{c}{r}", "condition": c, "prompt_id": "p", "response_id": r}
        for c in ("base", "solution")
        for r in ("r0", "r1")
    ]
    targets = [
        {"response_id": "r0", "prompt_id": "p", "target_type": "self_response"},
        {"response_id": "r1", "prompt_id": "p", "target_type": "strong_success"},
    ]
    own = S.pair_variants_with_targets(variants, targets, self_target_only=True)
    assert [(v["variant_id"], t["response_id"]) for v, t in own] == [
        ("baser0", "r0"),
        ("baser1", "r1"),
        ("solutionr0", "r0"),
        ("solutionr1", "r1"),
    ]
    assert len(S.pair_variants_with_targets(variants, targets, self_target_only=False)) == 8
    assert (
        len(
            S.pair_variants_with_targets(
                variants, targets, self_target_only=False, target_type_filter=["strong_success"]
            )
        )
        == 4
    )
    filtered = S.pair_variants_with_targets(
        variants, targets, self_target_only=True, condition_filter=["solution"], max_examples=1
    )
    assert [v["variant_id"] for v, _ in filtered] == ["solutionr0"]
    with pytest.raises(ValueError, match="nope"):
        S.pair_variants_with_targets(variants, targets, self_target_only=True, condition_filter=["nope"])
