"""The memory plan (trainer/memory_plan.py): sizes from config.json alone, the release's verdicts, the GPU
figures we measured, and the trainer's check before any worker starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trainer.main import CONFIG_DIR
from trainer.memory_advice import suggest
from trainer.memory_model import read_model_shape, shape_from_config
from trainer.memory_plan import (
    GB,
    GEN_BUDGET_KEY,
    MemoryPlanError,
    check_before_start,
    plan_memory,
    verdict_line,
)

ROOT = Path(__file__).resolve().parents[2]
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 12288,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
}
# benchmarks/step_breakdown.py's 0.6b preset: the model of the H200 rows in docs/performance.md
QWEN3_06B = {
    **QWEN3_8B,
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "intermediate_size": 3072,
    "tie_word_embeddings": True,
}


def _model_dir(tmp_path: Path, config: dict, name: str) -> str:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))  # nothing else: no weights, no tokenizer
    return str(folder)


def _compose(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return OmegaConf.to_container(compose(config_name=name, overrides=overrides), resolve=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "trainer.memory_plan", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_parameter_count_matches_a_real_model_built_from_the_same_config():
    from transformers import AutoConfig, AutoModelForCausalLM

    embedded = ROOT / "datasets" / "embedded" / "base_model"
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(embedded))
    assert read_model_shape(str(embedded)).params == sum(p.numel() for p in model.parameters())
    untied = json.loads((embedded / "config.json").read_text()) | {"tie_word_embeddings": False}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**untied))
    assert shape_from_config(untied, "x").params == sum(p.numel() for p in model.parameters())
    # the published sizes: Qwen3-8B 8.19 B, the 0.6b preset 596.05 M (docs/performance.md)
    assert shape_from_config(QWEN3_8B, "x").params == pytest.approx(8.19e9, rel=1e-3)
    assert shape_from_config(QWEN3_06B, "x").params == pytest.approx(596.05e6, rel=1e-4)


def test_release_8b_fits_eight_h100s_and_prints_every_phase(tmp_path):
    path = _model_dir(tmp_path, QWEN3_8B, "qwen3-8b")
    done = _cli(
        "--config-name",
        "mopd",
        "release=gpu",
        f"actor_rollout_ref.model.path={path}",
        "trainer.n_gpus_per_node=8",
        "trainer.device_memory_gb=80",
    )
    assert done.returncode == 0, done.stderr
    for column in ("load", "generation", "logprob/teacher", "update", "checkpoint"):
        assert column in done.stdout
    for row in (
        "actor weights",
        "gradients",
        "optimizer state",
        "activations",
        "fused head chunks",
        "teacher weights",
        "KV cache",
        "left of usable",
    ):
        assert row in done.stdout
    assert "verdict: fits" in done.stdout


def test_release_8b_on_one_16gb_gpu_stops_with_one_line_naming_a_key(tmp_path):
    path = _model_dir(tmp_path, QWEN3_8B, "qwen3-8b")
    done = _cli(
        "--config-name",
        "mopd",
        "release=gpu",
        f"actor_rollout_ref.model.path={path}",
        "trainer.n_gpus_per_node=1",
        "trainer.device_memory_gb=16",
    )
    assert done.returncode == 1
    reason = done.stderr.strip().splitlines()
    assert len(reason) == 1 and "does not fit" in reason[0]
    assert re.search(r"(actor_rollout_ref|trainer)\.[a-z_.]+", reason[0]), reason


def test_missing_config_json_is_one_line(tmp_path):
    done = _cli("--config-name", "grpo", f"actor_rollout_ref.model.path={tmp_path}", "trainer.device_memory_gb=80")
    assert done.returncode == 2
    assert (
        done.stderr.strip().count("\n") == 0
        and "config.json" in done.stderr
        and "actor_rollout_ref.model.path" in done.stderr
    )


def _measured_h200_peaks() -> dict[str, float]:
    """The H200 rows of docs/performance.md: peak torch-allocated GPU memory, MOPD and GRPO."""
    text = (ROOT / "docs" / "performance.md").read_text()
    row = re.search(r"\| peak torch-allocated GPU memory \(GB\) \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \|", text)
    assert row, "the H200 peak-memory row of docs/performance.md moved; update this test with it"
    return {"mopd": float(row.group(1)), "grpo": float(row.group(2))}


@pytest.mark.parametrize("mode", ["mopd", "grpo"])
def test_plan_matches_the_measured_h200_peaks_within_25_percent(tmp_path, mode):
    # The H200 run's settings (benchmarks/step_breakdown.py --preset 0.6b --response-length 1024 on 2026-11-28)
    path = _model_dir(tmp_path, QWEN3_06B, "q06")
    cfg = _compose(
        mode,
        [
            f"actor_rollout_ref.model.path={path}",
            "data.val_files=null",
            "data.train_batch_size=8",
            "data.max_prompt_length=512",
            "data.max_response_length=1024",
            "actor_rollout_ref.rollout.n=8",
            "actor_rollout_ref.actor.ppo_mini_batch_size=8",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
            "actor_rollout_ref.actor.self_distillation.max_reprompt_len=4864",
            "actor_rollout_ref.model.enable_gradient_checkpointing=true",
            "actor_rollout_ref.model.use_remove_padding=true",
            "trainer.device=cuda",
            "trainer.device_memory_gb=141",
        ],
    )
    plan = plan_memory(cfg, 141 * GB)
    measured = _measured_h200_peaks()[mode]
    assert plan.peak / GB == pytest.approx(measured, rel=0.25), (plan.peak_phase, plan.peak / GB)
    assert plan.peak_phase == "generation"  # 64 rollouts x 1,536 tokens of KV cache: the step's peak


def _release(tmp_path, *extra: str) -> dict:
    path = _model_dir(tmp_path, QWEN3_8B, "q8")
    return _compose(
        "mopd", ["release=gpu", f"actor_rollout_ref.model.path={path}", "trainer.n_gpus_per_node=8", *extra]
    )


def test_generation_budget_bounds_the_kv_cache_and_is_what_the_plan_suggests(tmp_path):
    small = _release(tmp_path, f"{GEN_BUDGET_KEY}=12288")
    large = _release(tmp_path, f"{GEN_BUDGET_KEY}=1048576")
    kv = lambda cfg: plan_memory(cfg, 80 * GB).phases["generation"]["KV cache (generation)"]  # noqa: E731
    assert kv(large) > kv(small)
    assert kv(small) == 2 * 6144 * 2 * 36 * 8 * 128 * 2  # two rows of 2,048 + 4,096 tokens, bf16 K and V
    assert not plan_memory(large, 80 * GB).fits
    change = suggest(large, 80 * GB)
    assert change is not None and list(change) == [GEN_BUDGET_KEY]
    assert plan_memory(_release(tmp_path, f"{GEN_BUDGET_KEY}={change[GEN_BUDGET_KEY]}"), 80 * GB).fits
    assert GEN_BUDGET_KEY in verdict_line(plan_memory(large, 80 * GB), large, 80 * GB)


def test_offload_and_checkpointing_lower_what_they_should(tmp_path):
    base = plan_memory(_release(tmp_path), 80 * GB)
    off = plan_memory(_release(tmp_path, "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true"), 80 * GB)
    assert "optimizer state (Adam)" not in off.phases["generation"]
    assert off.phases["update"]["optimizer state (Adam)"] == base.phases["update"]["optimizer state (Adam)"]
    no_ckpt = plan_memory(_release(tmp_path, "actor_rollout_ref.model.enable_gradient_checkpointing=false"), 80 * GB)
    assert (
        no_ckpt.phases["update"]["activations (micro-batch)"] > 10 * base.phases["update"]["activations (micro-batch)"]
    )


def test_a_kl_penalty_plans_its_frozen_reference_and_its_forward(tmp_path):
    path = _model_dir(tmp_path, QWEN3_8B, "q8")

    def grpo(*extra):
        return _compose(
            "grpo",
            [
                "release=gpu",
                f"actor_rollout_ref.model.path={path}",
                "trainer.n_gpus_per_node=8",
                *extra,
            ],
        )

    plain = plan_memory(grpo(), 80 * GB)
    kl = plan_memory(grpo("actor_rollout_ref.actor.use_kl_loss=true"), 80 * GB)
    reference = "teacher weights (fp32 shard)"
    assert plain.phases["load"].get(reference, 0) == 0 and kl.phases["load"][reference] > 0
    assert kl.phases["log_prob"] and kl.peak >= plain.peak


def test_trainer_check_stops_warns_or_passes(tmp_path, capsys):
    cfg = _release(tmp_path, "trainer.device_memory_gb=16", "trainer.n_gpus_per_node=1")
    with pytest.raises(MemoryPlanError) as err:
        check_before_start(cfg)
    assert "\n" not in str(err.value) and "does not fit" in str(err.value)
    fits = plan_memory(_release(tmp_path), 80 * GB)
    snug = (fits.peak + 2 * GB) / 0.95 / GB  # the peak at 95% of what is usable: fits, within 10%
    cfg = _release(tmp_path, f"trainer.device_memory_gb={snug}")
    assert check_before_start(cfg).tight
    assert "warning: memory plan fits" in capsys.readouterr().out
    cpu = _compose("grpo", ["trainer.device=cpu"])  # no GPU to plan for: not checked
    assert check_before_start(cpu) is None


def test_trainer_main_runs_the_plan_before_any_worker(tmp_path):
    path = _model_dir(tmp_path, QWEN3_8B, "q8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.main",
            "--config-name",
            "grpo",
            f"actor_rollout_ref.model.path={path}",
            "trainer.device_memory_gb=16",
            "trainer.backend=local",
            f"trainer.default_local_dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "memory plan does not fit" in done.stderr and done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run" / "checkpoints").exists()
