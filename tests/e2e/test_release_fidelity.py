"""The release's behaviours run as a user runs them: summaries asked for on training prompts only, KL to the
reference in the GRPO baseline, and balanced data-parallel ranks that train exactly like unbalanced ones."""

from __future__ import annotations

import json

import pytest
from test_train_cpu import _assert_trains_alike, fixture_dir, metrics, train  # noqa: F401 (fixture)

SD = "actor_rollout_ref.actor.self_distillation"
INSTRUCTION = "briefly summarize your key approach in one sentence inside <summary> tags"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_summaries_are_asked_for_in_training_prompts_only(fixture_dir, tmp_path):
    """Release rule (reference §2.1 step 2): with summarize_solutions the instruction ends every training
    prompt (so the teacher's {prompt} has it) and no validation prompt; peers' summaries fill the teacher prompt."""
    run = tmp_path / "run"
    train(
        fixture_dir,
        run,
        "trainer.backend=local",
        f"{SD}.summarize_solutions=true",
        f"{SD}.summary_from_all=true",
        f"{SD}.summary_k=3",
        f"{SD}.include_another_solution=false",
        f"{SD}.include_failure_solution=false",
        "data.max_prompt_length=400",
        f"{SD}.max_reprompt_len=2048",
        "trainer.val_before_train=true",
        f"trainer.rollout_data_dir={run / 'rollouts'}",
        f"trainer.validation_data_dir={run / 'validation'}",
    )
    rollouts = read_jsonl(run / "rollouts" / "1.jsonl") + read_jsonl(run / "rollouts" / "2.jsonl")
    assert rollouts and all(INSTRUCTION in r["input"] for r in rollouts)
    assert all(INSTRUCTION in r["teacher_input"] for r in rollouts)
    with_summaries = [r for r in rollouts if "Summary of another" in r["teacher_input"]]
    assert with_summaries, "no teacher prompt carries a peer's summary"
    validation = read_jsonl(run / "validation" / "0.jsonl")
    assert validation and not any(INSTRUCTION in r["input"] for r in validation)
    rows = metrics(run)
    train_rows = [r for r in rows if r["step"] >= 1]
    assert all(r["self_distillation/summary_sampled_total_count"] > 0 for r in train_rows)
    for r in train_rows:  # every sampled summary came from a tag or the fallback
        assert (
            r["self_distillation/summary_sampled_with_tag_count"]
            + r["self_distillation/summary_sampled_fallback_count"]
            == r["self_distillation/summary_sampled_total_count"]
        )


def test_grpo_with_kl_loss_and_kl_in_reward_trains_and_logs_its_kl(fixture_dir, tmp_path):
    run = tmp_path / "kl"
    train(
        fixture_dir,
        run,
        "trainer.backend=local",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.kl_loss_coef=0.1",
        "algorithm.use_kl_in_reward=true",
        "algorithm.kl_ctrl.type=adaptive",
        "algorithm.kl_ctrl.kl_coef=0.05",
        "algorithm.kl_ctrl.target_kl=1e-6",
        "algorithm.kl_ctrl.horizon=16",
        "trainer.total_training_steps=3",
        "algorithm.adv_estimator=rloo",
        config="grpo",
    )
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # step 1: the policy is the reference (k3 of equal log-probs is 0); after updates it has moved away
    assert rows[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["actor/kl_loss"] > 1e-7 and rows[-1]["critic/kl"] != 0.0
    assert all("timing_s/ref" in r and r["actor/kl_coef"] == 0.1 for r in rows)
    # adaptive beta (horizon 16 = the step's 16 rollouts, so each move is the clipped error, +-20%): step 1's KL
    # is 0 (below target: beta falls by 20%), later ones are above the tiny target (beta rises by 20%)
    coefs = [r["critic/kl_coef"] for r in rows]
    assert rows[0]["critic/kl"] == 0.0 and rows[1]["critic/kl"] > 1e-6
    assert coefs == pytest.approx([0.05, 0.05 * 0.8, 0.05 * 0.8 * 1.2])


@pytest.mark.slow
def test_balanced_ranks_train_like_unbalanced_ones(fixture_dir, tmp_path):
    """trainer.balance_batch on 2 ranks: the same rollouts, losses and gradient norms as without, and a lower
    token imbalance. MOPD: whole prompt groups move (the teacher's shared prefixes), and the teacher prompts
    (peers of different lengths) make the groups' work differ."""
    common = (
        "trainer.backend=ray",
        "trainer.n_gpus_per_node=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    )
    train(fixture_dir, tmp_path / "on", *common, "trainer.balance_batch=true")
    train(fixture_dir, tmp_path / "off", *common, "trainer.balance_batch=false")
    on, off = metrics(tmp_path / "on"), metrics(tmp_path / "off")
    _assert_trains_alike(on, off, steps=2)
    for row in on:
        assert row["perf/dp_token_imbalance/after"] <= row["perf/dp_token_imbalance/before"] + 1e-9
    assert any(r["perf/dp_token_imbalance/after"] < r["perf/dp_token_imbalance/before"] for r in on), (
        "the rows were never reordered: the equality above would be vacuous"
    )
    assert "perf/dp_token_imbalance/before" not in off[0]
