"""The embedded default: the arithmetic task, its verifier and verl rows, and the shipped base model."""

import json
from pathlib import Path

import pytest
import torch

from mopd.embedded.embedded_task import (
    DATA_SOURCE,
    compute_score,
    make_problems,
    problem_space,
    split_of,
    to_verl_row,
)

EMBEDDED = Path(__file__).resolve().parents[2] / "datasets" / "embedded"
BASE_MODEL = EMBEDDED / "base_model"
# The shipped artifacts come from scripts/make_embedded_default.py (a checkout without them, e.g. one
# made with a sparse clone, still runs the generator and scorer tests).
needs_artifacts = pytest.mark.skipif(
    not (BASE_MODEL / "config.json").exists(), reason="datasets/embedded/base_model is not in this checkout"
)


def _pair(problem):
    return min(problem["a"], problem["b"]), max(problem["a"], problem["b"])


# ---------------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------------
def test_generator_is_deterministic_and_answers_are_right():
    first = make_problems("train", 200, seed=3)
    assert first == make_problems("train", 200, seed=3)
    assert first != make_problems("train", 200, seed=4)
    assert len({p["question"] for p in first}) == 200  # drawn without replacement
    for p in first:
        assert p["question"] == f"What is {p['a']}+{p['b']}?"
        assert p["answer"] == str(p["a"] + p["b"])
        assert 10 <= p["a"] <= 99 and 10 <= p["b"] <= 99


def test_train_and_test_are_disjoint_even_with_swapped_operands():
    train_pairs = {(min(a, b), max(a, b)) for a, b in problem_space("train")}
    test_pairs = {(min(a, b), max(a, b)) for a, b in problem_space("test")}
    assert train_pairs and test_pairs and not train_pairs & test_pairs
    assert len(problem_space("train")) + len(problem_space("test")) == 90 * 90
    assert 0.05 < len(problem_space("test")) / 8100 < 0.15
    assert split_of(47, 38) == split_of(38, 47)
    train = make_problems("train", 2000, seed=1)
    test = make_problems("test", 256, seed=2)
    assert not {_pair(p) for p in train} & {_pair(p) for p in test}
    with pytest.raises(ValueError):
        make_problems("valid", 1, seed=0)
    with pytest.raises(ValueError):
        make_problems("test", 10**6, seed=0)


# ---------------------------------------------------------------------------------------------------
# Verifier
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response, score, pred, bad_format",
    [
        ("85", 1.0, "85", 0),
        ("  85\n", 1.0, "85", 0),
        ("85<|im_end|>", 1.0, "85", 0),
        (" 85 <|im_end|>", 1.0, "85", 0),
        ("84", 0.0, "84", 0),
        ("850", 0.0, "850", 0),
        ("8 5", 0.0, "", 1),
        ("eighty-five", 0.0, "", 1),
        ("85.", 0.0, "", 1),
        ("", 0.0, "", 1),
        ("<|im_end|>", 0.0, "", 1),
    ],
)
def test_compute_score(response, score, pred, bad_format):
    out = compute_score(response, "85")
    assert set(out) == {"score", "acc", "pred", "incorrect_format", "feedback"}
    assert out["score"] == out["acc"] == score
    assert out["pred"] == pred
    assert out["incorrect_format"] == bad_format
    assert (out["feedback"] == "") == (score == 1.0)


def test_feedback_names_the_wrong_answer():
    assert compute_score("84", "85")["feedback"] == "Your answer 84 is wrong."
    assert compute_score("85", "85")["feedback"] == ""


# ---------------------------------------------------------------------------------------------------
# verl rows and shipped parquet files
# ---------------------------------------------------------------------------------------------------
def test_to_verl_row_schema():
    problem = make_problems("test", 1, seed=0)[0]
    row = to_verl_row(problem, "test", 7)
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["data_source"] == DATA_SOURCE == "embedded_arith"
    assert row["ability"] == "math"
    assert isinstance(row["prompt"], list) and row["prompt"]
    assert all(set(m) == {"role", "content"} for m in row["prompt"])
    assert row["prompt"][-1] == {"role": "user", "content": problem["question"]}
    assert row["reward_model"] == {"style": "rule", "ground_truth": problem["answer"]}
    assert row["extra_info"] == {"split": "test", "index": 7, "question": problem["question"]}
    assert compute_score(problem["answer"], row["reward_model"]["ground_truth"])["score"] == 1.0


@needs_artifacts
def test_shipped_parquet_splits():
    pd = pytest.importorskip("pandas")
    train = pd.read_parquet(EMBEDDED / "train.parquet")
    test = pd.read_parquet(EMBEDDED / "test.parquet")
    assert len(train) == 2000 and len(test) == 256
    assert set(train.columns) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert not set(train["extra_info"].map(lambda e: e["question"])) & set(
        test["extra_info"].map(lambda e: e["question"])
    )
    first = test.iloc[0]
    assert first["data_source"] == DATA_SOURCE
    assert first["reward_model"]["ground_truth"] == make_problems("test", 256, seed=2)[0]["answer"]


# ---------------------------------------------------------------------------------------------------
# The shipped base model
# ---------------------------------------------------------------------------------------------------
@needs_artifacts
def test_base_model_loads_offline_and_answers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BASE_MODEL))
    model = AutoModelForCausalLM.from_pretrained(str(BASE_MODEL)).eval()
    assert model.config.model_type == "qwen3"
    assert len(tok) == 261 and model.config.vocab_size >= len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id == 0
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 4_000_000
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 47+38?"}], tokenize=False, add_generation_prompt=True
    )
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, do_sample=False, max_new_tokens=8, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert tok.eos_token_id in new and new.index(tok.eos_token_id) <= 4  # a short answer, then <|im_end|>
    answer = tok.decode(new, skip_special_tokens=True)
    assert compute_score(answer, "85")["incorrect_format"] == 0, answer


@needs_artifacts
def test_embedded_stats_report_the_target_difficulty():
    """The shipped base's recorded numbers: room to learn without context, and every success-showing
    context a method renders (SDPO one peer, MOPD 2S1F, positive-only 2S) read far better than no context.
    (Issue 12's band: 25-45% without context. The shipped base reads SDPO's feedback-only and MOPD's
    no-success prompts worse than no context -- recorded in the stats, not bounded here.)"""
    stats = json.loads((BASE_MODEL / "embedded_stats.json").read_text())
    nc = stats["no_context_sampled_acc"]
    assert 0.25 <= nc <= 0.45
    assert stats["with_context_sampled_acc"] >= 0.75
    assert stats["with_context_sampled_acc"] > nc + 0.25
    per_context = stats["context_sampled_acc"]
    assert set(per_context) == {
        "no_context",
        "sdpo_one_success",
        "sdpo_feedback_only",
        "mopd_2s1f",
        "mopd_no_success",
        "positive_only_2s",
        "failure_only",
    }
    assert per_context["no_context"] == nc
    for name in ("sdpo_one_success", "mopd_2s1f", "positive_only_2s"):
        assert per_context[name] >= 0.6 and per_context[name] > nc + 0.1, (name, per_context[name])
    assert 1_000_000 <= stats["parameters"] <= 4_000_000


@needs_artifacts
def test_shipped_base_model_solves_some_and_reads_peer_evidence():
    """Re-measured here, not read from the stats file: sampled (T=1) accuracy on 64 held-out problems
    without context is in the target band, and far higher when the teacher prompt (rendered by
    mopd.core.peers + mopd.core.reprompt, as in training) shows correct peers and a failed one."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mopd.embedded.embedded_task import prompt_messages
    from mopd.embedded.recipe.contexts import (
        chat_prompt,
        eval_context_messages,
        eval_group_messages,
        method_configs,
        peer_config,
    )
    from mopd.embedded.recipe.evaluation import accuracy, generate_answers

    tok = AutoTokenizer.from_pretrained(str(BASE_MODEL))
    model = AutoModelForCausalLM.from_pretrained(str(BASE_MODEL))
    problems = make_problems("test", 256, seed=2)[:64]
    answers = [p["answer"] for p in problems]
    rng = random.Random(0)
    plain = [chat_prompt(tok, prompt_messages(p)) for p in problems]
    context = [chat_prompt(tok, eval_context_messages(p, rng, peer_config())) for p in problems]
    assert "A known failed solution" in context[0] and "Correct solution" in context[0]
    no_context = accuracy(generate_answers(model, tok, plain * 4, sample=True, seed=1), answers * 4)
    with_context = accuracy(generate_answers(model, tok, context * 4, sample=True, seed=2), answers * 4)
    assert 0.18 <= no_context <= 0.45, no_context  # 256 samples: the band of the stats file, +-0.07
    assert with_context >= no_context + 0.2, (no_context, with_context)
    # SDPO's contexts (sdpo.yaml), rendered the same way: one correct peer is read (better than no context;
    # the previous base got 0.03 here, which is why SDPO collapsed on it). Feedback-only prompts are rendered
    # as training renders them; the base still reads them poorly (embedded_stats.json), so no bound here.
    sdpo = method_configs()["sdpo"]
    one = [chat_prompt(tok, eval_group_messages(p, rng, sdpo, 1, True)) for p in problems]
    feedback = [chat_prompt(tok, eval_group_messages(p, rng, sdpo, 0, True)) for p in problems]
    assert "Correct solution" in one[0] and "Another" not in one[0] and "failed" not in one[0]
    assert "feedback from your unsuccessful" in feedback[0] and "Correct solution" not in feedback[0]
    one_acc = accuracy(generate_answers(model, tok, one * 4, sample=True, seed=3), answers * 4)
    assert one_acc > no_context + 0.05, (no_context, one_acc)  # 256 samples each: s.e. ~0.03
