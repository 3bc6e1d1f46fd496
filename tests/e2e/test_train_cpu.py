"""Short training runs on CPU, as a user runs them: ``python -m trainer.main --config-name X ...``.

A tiny random Qwen3 (project tokenizer) and a few embedded-task prompts are made in a temp dir, so these
tests exercise the whole loop (Ray workers, FSDP2 on gloo, HF rollout, verifier, peers, losses,
checkpoints) without depending on the shipped base model's quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    import pandas as pd
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mopd.embedded import embedded_task
    from mopd.embedded.tiny_tokenizer import load_tiny_tokenizer

    out = tmp_path_factory.mktemp("e2e")
    tok = load_tiny_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=264,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            initializer_range=0.2,
        )
    )
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    for split, n in (("train", 32), ("test", 4)):
        rows = [embedded_task.to_verl_row(p, split, i) for i, p in enumerate(embedded_task.make_problems(split, n, 0))]
        pd.DataFrame(rows).to_parquet(out / f"{split}.parquet")
    return out


def train(fixture_dir: Path, run_dir: Path, *overrides: str, config: str = "mopd", check: bool = True):
    cmd = [
        sys.executable,
        "-m",
        "trainer.main",
        "--config-name",
        config,
        f"actor_rollout_ref.model.path={fixture_dir / 'model'}",
        f"data.train_files={fixture_dir / 'train.parquet'}",
        f"data.val_files={fixture_dir / 'test.parquet'}",
        "data.train_batch_size=4",
        "data.max_response_length=6",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.val_kwargs.n=2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.self_distillation.max_reprompt_len=512",
        "trainer.total_training_steps=2",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        "trainer.logger=[console,jsonl]",
        f"trainer.default_local_dir={run_dir}",
        *overrides,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "config,extra",
    [
        ("grpo", ()),
        ("sdpo", ("actor_rollout_ref.actor.self_distillation.teacher_regularization=trust-region",)),
        ("mopd", ()),
        ("mopd", ("actor_rollout_ref.model.use_remove_padding=true", "actor_rollout_ref.ref.shared_prefix=false")),
    ],
    ids=["grpo", "sdpo-trust-region", "mopd", "mopd-packed"],
)
def test_two_ray_workers_fsdp2(fixture_dir, tmp_path, config, extra):
    run = tmp_path / config
    train(
        fixture_dir,
        run,
        "trainer.backend=ray",
        "trainer.n_gpus_per_node=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        f"trainer.rollout_data_dir={run / 'rollouts'}",
        *extra,
        config=config,
    )
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert torch.isfinite(torch.tensor(row["actor/loss"]))
        assert row["actor/grad_norm"] >= 0 and "timing_s/gen" in row and "timing_s/update_actor" in row
        assert row["perf/throughput"] > 0
    if config != "grpo":
        assert "self_distillation/reprompt_sample_fraction" in rows[0]
    dump = [json.loads(line) for line in (run / "rollouts" / "1.jsonl").read_text().splitlines()]
    assert len(dump) == 16
    assert {"input", "output", "gts", "score", "step", "uid", "feedback", "acc", "pred"} <= set(dump[0])


def test_local_backend_matches_ray(fixture_dir, tmp_path):
    common = ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",)
    train(fixture_dir, tmp_path / "ray", "trainer.backend=ray", "trainer.n_gpus_per_node=2", *common)
    train(fixture_dir, tmp_path / "local", "trainer.backend=local", *common)
    _assert_trains_alike(metrics(tmp_path / "ray"), metrics(tmp_path / "local"), steps=2)


def test_shared_prefix_teacher_trains_like_the_plain_teacher(fixture_dir, tmp_path):
    """actor_rollout_ref.ref.shared_prefix (the default) against the plain teacher forward: the same
    rollouts, losses and gradient norms (float32; attention sums in another order)."""
    common = ("trainer.backend=local", "trainer.total_training_steps=3")
    train(fixture_dir, tmp_path / "shared", *common)
    train(fixture_dir, tmp_path / "plain", *common, "actor_rollout_ref.ref.shared_prefix=false")
    _assert_trains_alike(metrics(tmp_path / "shared"), metrics(tmp_path / "plain"), steps=3)


def _assert_trains_alike(rows_a: list[dict], rows_b: list[dict], steps: int) -> None:
    """The same rollouts (scores), and losses and gradient norms to float32 summation order."""
    assert len(rows_a) == len(rows_b) == steps
    for a, b in zip(rows_a, rows_b):
        assert a["critic/score/mean"] == b["critic/score/mean"]
        assert a["actor/loss"] == pytest.approx(b["actor/loss"], rel=1e-4, abs=1e-7)
        assert a["actor/grad_norm"] == pytest.approx(b["actor/grad_norm"], rel=1e-3)


@pytest.mark.parametrize("shared", [False, True], ids=["every-forward-packs", "shared-prefixes"])
def test_packed_sequences_train_like_padded_ones(fixture_dir, tmp_path, shared):
    """actor_rollout_ref.model.use_remove_padding under sdpa (per-sequence attention, packed_attention): the
    padded run's rollouts, losses and gradient norms. Shared prefixes off (with gradient checkpointing):
    every forward packs; on: the teacher's tree forwards (KV caches, 4D masks) run through the packing
    model's plain-sdpa side. The HF export does not name the packing attention."""
    common = (
        "trainer.backend=local",
        "trainer.total_training_steps=3",
        "trainer.save_freq=3",
        f"actor_rollout_ref.actor.shared_prefix={str(shared).lower()}",
        f"actor_rollout_ref.ref.shared_prefix={str(shared).lower()}",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={str(not shared).lower()}",
    )
    train(fixture_dir, tmp_path / "packed", *common, "actor_rollout_ref.model.use_remove_padding=true")
    train(fixture_dir, tmp_path / "padded", *common)
    _assert_trains_alike(metrics(tmp_path / "packed"), metrics(tmp_path / "padded"), steps=3)
    config = (tmp_path / "packed" / "checkpoints" / "global_step_3" / "hf" / "config.json").read_text()
    assert "mopd_packed" not in config


def _hf_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resume_continues_exactly(fixture_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("trainer.backend=local", "trainer.save_freq=2", "trainer.total_training_steps=4")
    train(fixture_dir, straight, *common)
    train(fixture_dir, split, "trainer.backend=local", "trainer.save_freq=2", "trainer.total_training_steps=2")
    resumed = train(fixture_dir, split, *common)
    assert "resumed from" in resumed.stdout
    a = _hf_weights(straight / "checkpoints" / "global_step_4" / "hf")
    b = _hf_weights(split / "checkpoints" / "global_step_4" / "hf")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    losses_a = [r["actor/loss"] for r in metrics(straight)]
    losses_b = [r["actor/loss"] for r in metrics(split)]
    assert losses_b == pytest.approx(losses_a, rel=1e-5)


def test_hf_export_loads_and_generates(fixture_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(fixture_dir, tmp_path / "run", "trainer.backend=local", "trainer.save_freq=2", config="grpo")
    export = tmp_path / "run" / "checkpoints" / "global_step_2" / "hf"
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": "What is 1+2?"}], tokenize=False, add_generation_prompt=True
        ),
        return_tensors="pt",
        add_special_tokens=False,
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_bad_config_and_missing_data_fail_clearly(fixture_dir, tmp_path):
    bad = train(fixture_dir, tmp_path / "a", "actor_rollout_ref.actor.self_distillation.alpha=3", check=False)
    assert bad.returncode == 2 and "self_distillation.alpha must be in [0, 1]" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = train(
        fixture_dir, tmp_path / "b", "trainer.backend=local", "data.train_files=/nonexistent/train.parquet", check=False
    )
    assert missing.returncode == 2 and "data.train_files: no such file: /nonexistent/train.parquet" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_external_teacher_with_another_vocabulary_is_refused(fixture_dir, tmp_path):
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    other = tmp_path / "other_teacher"
    Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
        )
    ).save_pretrained(other)
    AutoTokenizer.from_pretrained(fixture_dir / "model").save_pretrained(other)
    result = train(
        fixture_dir,
        tmp_path / "run",
        "trainer.backend=local",
        f"actor_rollout_ref.ref.model.path={other}",
        config="sdpo",
        check=False,
    )
    assert result.returncode == 2
    assert "actor_rollout_ref.ref.model.path" in result.stderr and "differs from the student's" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_step_on_sciknoweval_chemistry(fixture_dir, tmp_path):
    """The pipeline on real benchmark data: shared records -> preprocess.py -> parquet -> one MOPD step."""
    import shutil

    shared = ROOT.parent / "shared" / "datasets" / "sciknoweval" / "chemistry"
    if not shared.exists():
        pytest.skip("../shared/datasets is not beside the project")
    data = tmp_path / "chemistry"
    data.mkdir()
    for split in ("train.json", "test.json"):
        shutil.copy(shared / split, data / split)
    prep = subprocess.run(
        [sys.executable, "data/preprocess.py", "--data_source", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prep.returncode == 0, prep.stderr
    run = tmp_path / "run"
    train(
        fixture_dir,
        run,
        "trainer.backend=local",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        "data.max_prompt_length=4096",
        "data.max_response_length=8",
        "actor_rollout_ref.actor.self_distillation.max_reprompt_len=8192",
        "trainer.total_training_steps=1",
        "data.val_batch_size=8",
        f"trainer.rollout_data_dir={run / 'rollouts'}",
    )
    rows = metrics(run)
    assert rows[-1]["step"] == 1 and torch.isfinite(torch.tensor(rows[-1]["actor/loss"]))
    dump = [json.loads(line) for line in (run / "rollouts" / "1.jsonl").read_text().splitlines()]
    assert {r["data_source"] for r in dump} == {"sciknoweval"}
    assert all(r["score"] in (0.0, 1.0) for r in dump)
