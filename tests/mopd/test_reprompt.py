"""Teacher inputs with the project's real tokenizer and chat template."""

import random

import pytest
import torch

from mopd.core.config import SelfDistillationConfig
from mopd.core.peers import ControlBlock, PeerContext, PeerSelection, Rollout, select_peers
from mopd.core.reprompt import (
    append_summary_instruction,
    build_teacher_inputs,
    compute_step_ids,
    render_teacher_messages,
)
from mopd.embedded.tiny_tokenizer import load_tiny_tokenizer

SYSTEM = {"role": "system", "content": "Answer briefly."}
QUESTION = "What is 12+30?"


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def encode_responses(tok, texts):
    ids = [tok(t + tok.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(x) for x in ids) + 2  # extra right padding on every row
    responses = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(responses)
    for i, x in enumerate(ids):
        responses[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return responses, mask


def group(texts, rewards, feedback=None):
    feedback = feedback or [None] * len(texts)
    return [Rollout("q", r, t, feedback=f) for t, r, f in zip(texts, rewards, feedback)]


MOPD = dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always")


def test_rendered_2s1f_message_matches_templates_exactly(tok):
    cfg = SelfDistillationConfig(**MOPD)
    rollouts = group(["42", "41", "42!", "40"], [1, 0, 1, 0])
    ctx = PeerContext(primary=0, another=2, failure=3)
    msgs, _ = render_teacher_messages([SYSTEM, {"role": "user", "content": QUESTION}], ctx, rollouts, None, cfg)
    assert msgs[0] == SYSTEM
    assert msgs[1]["role"] == "user"
    assert msgs[1]["content"] == (
        QUESTION
        + "\nCorrect solution:\n\n42"
        + "\nAnother successful solution:\n\n42!"
        + "\nA known failed solution (avoid repeating this mistake):\n\n40"
        + "\n\nCorrectly solve the original question."
    )


def test_no_context_keeps_the_original_prompt(tok):
    cfg = SelfDistillationConfig()
    rollouts = group(["41"], [0])
    msgs, _ = render_teacher_messages(
        [SYSTEM, {"role": "user", "content": QUESTION}], PeerContext(), rollouts, None, cfg
    )
    assert msgs == [SYSTEM, {"role": "user", "content": QUESTION}]


def test_feedback_and_thinking_rules(tok):
    cfg = SelfDistillationConfig(
        remove_thinking_from_demonstration=True, include_failure_solution=True, failure_solution_condition="always"
    )
    rollouts = group(["<think>hmm</think>\n 42", "<think>oops</think>41"], [1, 0], ["", "off by one"])
    ctx = PeerContext(primary=0, failure=1, use_feedback=True)
    msgs, _ = render_teacher_messages([{"role": "user", "content": QUESTION}], ctx, rollouts, "off by one", cfg)
    content = msgs[-1]["content"]
    assert "Correct solution:\n\n42" in content and "hmm" not in content  # success stripped
    assert "<think>oops</think>41" in content  # the failure is shown as written
    assert content.index("A known failed") < content.index("The following is feedback")
    assert "feedback from your unsuccessful earlier attempt:\n\noff by one" in content


def test_control_blocks_render_by_slot_label(tok):
    cfg = SelfDistillationConfig(**MOPD, peer_control_mode="random_peer")
    rollouts = group(["a", "b", "c", "d"], [1, 0, 1, 0])
    ctx = PeerContext(
        control_blocks=(ControlBlock(1, "success"), ControlBlock(3, "success"), ControlBlock(2, "failure"))
    )
    content = render_teacher_messages([{"role": "user", "content": "Q"}], ctx, rollouts, None, cfg)[0][-1]["content"]
    assert content == (
        "Q\nCorrect solution:\n\nb\nAnother successful solution:\n\nd"
        "\nA known failed solution (avoid repeating this mistake):\n\nc\n\nCorrectly solve the original question."
    )


def _inputs(tok, cfg, texts, rewards, seed=0, **kw):
    rollouts = group(texts, rewards)
    selection = select_peers(rollouts, cfg, random.Random(seed))
    responses, mask = encode_responses(tok, texts)
    prompts = [[SYSTEM, {"role": "user", "content": QUESTION}]] * len(texts)
    return (
        build_teacher_inputs(tok, prompts, rollouts, selection, responses, mask, cfg, **kw),
        responses,
        mask,
        selection,
    )


def test_response_ids_are_appended_unchanged_and_prompts_left_padded(tok):
    cfg = SelfDistillationConfig(**MOPD)
    texts = ["42", "4 1 wrong", "42", "forty"]
    ti, responses, mask, _ = _inputs(tok, cfg, texts, [1, 0, 1, 0])
    width = ti.prompt_width
    assert torch.equal(ti.input_ids[:, width:], responses)
    assert torch.equal(ti.attention_mask[:, width:], mask)
    for i, length in enumerate(ti.prompt_lengths):
        assert ti.attention_mask[i, : width - length].sum() == 0  # left padding
        assert ti.attention_mask[i, width - length : width].all()
        text = tok.decode(ti.input_ids[i, width - length : width])
        expected = tok.apply_chat_template(ti.messages[i], tokenize=False, add_generation_prompt=True)
        assert text == expected
        assert text.endswith("<|im_start|>assistant\n")
    assert ti.position_ids[0, width] == ti.prompt_lengths[0]  # first response token follows the prompt
    assert ti.response_slice(responses.shape[1]) == slice(width - 1, width + responses.shape[1] - 1)


def test_each_row_gets_its_own_chat_tokenized_alone(tok):
    """Chats shown to several rows (the same peers) are templated and tokenized once, the distinct ones in
    one batched call: every row's prompt ids are still those of its own chat tokenized by itself."""
    cfg = SelfDistillationConfig(**MOPD)
    texts = ["42", "42", "41", "42", "forty", "42", "41", "x"]
    ti, _, _, _ = _inputs(tok, cfg, texts, [1, 1, 0, 1, 0, 1, 0, 0], seed=3)
    width = ti.prompt_width
    chats = {repr(m) for m in ti.messages}
    assert 1 < len(chats) < len(texts)  # some rows share a chat, not all
    for i, length in enumerate(ti.prompt_lengths):
        text = tok.apply_chat_template(ti.messages[i], tokenize=False, add_generation_prompt=True)
        assert ti.input_ids[i, width - length : width].tolist() == tok(text, add_special_tokens=False)["input_ids"]


def test_batched_teacher_log_probs_equal_unpadded_scoring(tok):
    """The teacher's logits at the response slice score the student's tokens exactly."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            initializer_range=0.5,
        )
    ).eval()
    cfg = SelfDistillationConfig(**MOPD)
    texts = ["42", "41 is it", "42", "no idea at all"]
    ti, responses, mask, _ = _inputs(tok, cfg, texts, [1, 0, 1, 0])
    with torch.no_grad():
        logits = model(input_ids=ti.input_ids, attention_mask=ti.attention_mask, position_ids=ti.position_ids).logits
    batched = torch.log_softmax(logits[:, ti.response_slice(responses.shape[1])].double(), -1)
    batched = batched.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    for i in range(len(texts)):
        n = int(mask[i].sum())
        prompt = ti.input_ids[i, ti.prompt_width - ti.prompt_lengths[i] : ti.prompt_width]
        seq = torch.cat([prompt, responses[i, :n]]).unsqueeze(0)
        with torch.no_grad():
            single = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
        p = len(prompt)
        expected = single[p - 1 : p + n - 1].gather(-1, responses[i, :n].unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(batched[i, :n], expected, atol=1e-4), i


def test_enable_thinking_kwarg_reaches_the_chat_template(tok):
    cfg = SelfDistillationConfig()
    ti, *_ = _inputs(tok, cfg, ["42", "41"], [1, 0], chat_template_kwargs={"enable_thinking": False})
    text = tok.decode(ti.input_ids[0, ti.prompt_width - ti.prompt_lengths[0] : ti.prompt_width])
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


LONG_SUCCESS = "S" * 40 + "tail-of-success"
LONG_FAILURE = "F" * 40 + "tail-of-failure"


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_drops_peer_context_only(tok, side):
    base = SelfDistillationConfig(**MOPD)
    texts, rewards = [LONG_SUCCESS, "x", LONG_SUCCESS, LONG_FAILURE], [1, 0, 1, 0]
    full, *_ = _inputs(tok, base, texts, rewards)
    limit = min(full.prompt_lengths) - 30
    cfg = SelfDistillationConfig(**MOPD, max_reprompt_len=limit, reprompt_truncation=side)
    ti, responses, _, _ = _inputs(tok, cfg, texts, rewards)
    assert max(ti.prompt_lengths) == limit
    assert all(d == f - limit for d, f in zip(ti.dropped_context_tokens, full.prompt_lengths))
    assert ti.metrics["self_distillation/teacher_prompt_length/clip_ratio"] == 1.0
    assert torch.equal(ti.input_ids[:, ti.prompt_width :], responses)
    for i in range(len(texts)):
        text = tok.decode(ti.input_ids[i, ti.prompt_width - ti.prompt_lengths[i] : ti.prompt_width])
        assert text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n" + QUESTION)
        assert text.endswith("\n\nCorrectly solve the original question.<|im_end|>\n<|im_start|>assistant\n")
        if side == "left":
            assert "Correct solution:" not in text  # the start of the context went first
        else:
            assert text.split(QUESTION, 1)[1].startswith("\nCorrect solution:")
            assert "avoid repeating" not in text  # the end of the context went first


def test_truncation_error_mode_names_the_sample(tok):
    cfg = SelfDistillationConfig(**MOPD, max_reprompt_len=60, reprompt_truncation="error")
    with pytest.raises(ValueError, match=r"sample #0 \(uid 'q'\).*max_reprompt_len=60"):
        _inputs(tok, cfg, [LONG_SUCCESS, LONG_SUCCESS], [1, 1])


def test_prompt_longer_than_limit_without_context_is_a_clear_error(tok):
    cfg = SelfDistillationConfig(**MOPD, max_reprompt_len=20)
    with pytest.raises(ValueError, match="without any peer context.*max_reprompt_len"):
        _inputs(tok, cfg, ["42", "41"], [1, 0], sample_names=["row-7", "row-8"])


def test_mismatched_batch_sizes_are_rejected(tok):
    cfg = SelfDistillationConfig()
    rollouts = group(["42", "41"], [1, 0])
    selection = select_peers(rollouts, cfg, random.Random(0))
    responses, mask = encode_responses(tok, ["42"])
    with pytest.raises(ValueError, match="must all match"):
        build_teacher_inputs(tok, [[SYSTEM]] * 2, rollouts, selection, responses, mask, cfg)


def test_masked_sample_still_gets_a_teacher_row(tok):
    cfg = SelfDistillationConfig()
    ti, _, _, selection = _inputs(tok, cfg, ["41", "40"], [0, 0])  # no success, no feedback
    assert selection.distillation_mask == [0.0, 0.0]
    assert ti.messages[0][-1]["content"] == QUESTION


def test_step_ids_follow_the_separator(tok):
    texts = ["ab\n\ncd\n\ne", "x\ny\n\n", "no separator"]
    responses, mask = encode_responses(tok, texts)
    ids = compute_step_ids(responses, mask, tok, "\n\n")
    # char-level tokens: "a b \n \n" -> step 0, "c d \n \n" -> step 1, "e <eos>" -> step 2
    assert ids[0, :9].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert ids[0, 9].item() == 2 and (ids[0, 10:] == -1).all()
    assert ids[1, : int(mask[1].sum())].tolist() == [0, 0, 0, 0, 0, 1]
    assert set(ids[2, : int(mask[2].sum())].tolist()) == {0}
    assert (ids[mask == 0] == -1).all()


def test_step_ids_with_multi_character_separator_tokens(tok):
    # "END" spans three tokens; the token completing it ends the step.
    responses, mask = encode_responses(tok, ["aEN", "D b"])
    joined = torch.cat([responses[0, :3], responses[1, :3]]).unsqueeze(0)
    ids = compute_step_ids(joined, torch.ones_like(joined), tok, "END")
    assert ids[0].tolist() == [0, 0, 0, 0, 1, 1]


def test_append_summary_instruction_copies(tok):
    msgs = [SYSTEM, {"role": "user", "content": "Q"}]
    out = append_summary_instruction(msgs, " Summarize.")
    assert out[-1]["content"] == "Q Summarize." and msgs[-1]["content"] == "Q"
    assert out[0] == SYSTEM


def test_summary_instruction_goes_to_the_last_user_message():
    """The release appends it to the last message whose role is user (not a trailing assistant turn)."""
    msgs = [
        SYSTEM,
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "partial"},
    ]
    out = append_summary_instruction(msgs, " Summarize.")
    assert [m["content"] for m in out] == [SYSTEM["content"], "Q1", "A1", "Q2 Summarize.", "partial"]
    with pytest.raises(ValueError, match="no user message"):
        append_summary_instruction([SYSTEM], " Summarize.")


def test_training_prompts_carry_the_instruction_and_its_tokens(tmp_path):
    """PromptDataset(instruction=...): the stored messages and the token ids both include it; without it,
    the same rows are untouched (validation)."""
    import pandas as pd

    from mopd.embedded import embedded_task
    from mopd.embedded.tiny_tokenizer import load_tiny_tokenizer
    from trainer.prompt_dataset import PromptDataset

    tok = load_tiny_tokenizer()
    rows = [embedded_task.to_verl_row(p, "train", i) for i, p in enumerate(embedded_task.make_problems("train", 3, 0))]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    plain = PromptDataset(str(tmp_path / "t.parquet"), tok, max_prompt_length=1024)
    asked = PromptDataset(str(tmp_path / "t.parquet"), tok, max_prompt_length=1024, instruction=" <summary> please")
    for a, b in zip(plain, asked):
        assert b["messages"][-1]["content"] == a["messages"][-1]["content"] + " <summary> please"
        assert " <summary> please" in tok.decode(b["prompt_ids"]) and " <summary> please" not in tok.decode(
            a["prompt_ids"]
        )


def test_summaries_render_with_item_templates(tok):
    cfg = SelfDistillationConfig(
        summarize_solutions=True, summary_k=2, summary_from_all=True, include_primary_solution=False
    )
    texts = ["ok <summary>add tens</summary>", "bad <summary>guessed</summary>", "me"]
    rollouts = group(texts, [1, 0, 0])
    selection = PeerSelection(
        [PeerContext(), PeerContext(), PeerContext(summaries=(0, 1), summary_texts=("add tens", "guessed"))]
    )
    responses, mask = encode_responses(tok, texts)
    ti = build_teacher_inputs(tok, [[{"role": "user", "content": "Q"}]] * 3, rollouts, selection, responses, mask, cfg)
    content = ti.messages[2][-1]["content"]
    assert content == (
        "Q\nSummary of another successful solution:\n\nadd tens\n\n"
        "\nSummary of another unsuccessful solution:\n\nguessed\n\n\n\nCorrectly solve the original question."
    )
