"""Launch scripts: DRY_RUN=1 prints the command; env flags map to the right Hydra overrides."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trainer import config_schema
from trainer.config_schema import validate_config

ROOT = Path(__file__).resolve().parents[2]
SD = "actor_rollout_ref.actor.self_distillation"
ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
EMBEDDED_LINE = "No CUDA device and no MODEL_PATH: running the embedded CPU default (tiny Qwen3 on datasets/embedded)"
ROOT_SCRIPTS = ["run_local_sdpo.sh", "run_local_grpo.sh", "run_ts_sdpo.sh"]
EXPERIMENT_SCRIPTS = [
    "experiments/generalization/run_sdpo_all.sh",
    "experiments/generalization/run_baseline_grpo_all.sh",
    "experiments/rich_feedback/run_sdpo.sh",
    "experiments/rich_feedback/run_baseline_grpo.sh",
]
# On CUDA the scripts pick vllm where it is installed (for the interpreter they run), hf otherwise.
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
EXPECTED_ROLLOUT = "vllm" if HAVE_VLLM else "hf"
GEN_DATASETS = [
    "sciknoweval/biology",
    "sciknoweval/chemistry",
    "sciknoweval/material",
    "sciknoweval/physics",
    "tooluse",
]


def run(script: str, *args: str, dry: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run a script with a clean environment (no flags leak in from the caller's shell)."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    base.update(PYTHON=sys.executable, USE_CUDA="0")
    if dry:
        base["DRY_RUN"] = "1"
    base.update(env)
    return subprocess.run(
        ["bash", str(ROOT / script), *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60
    )


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def command(script: str, *args: str, **env: str) -> list[str]:
    (cmd,) = commands(run(script, *args, **env))
    return cmd


def overrides(cmd: list[str]) -> list[str]:
    assert cmd[1:4] == ["-m", "trainer.main", "--config-name"], cmd
    return cmd[5:]


def as_dict(cmd: list[str]) -> dict[str, str]:
    out = {}
    for item in overrides(cmd):
        key, _, value = item.partition("=")
        out[key] = value  # the last one wins, as in Hydra
    return out


def composed(cmd: list[str]) -> dict:
    """The config the printed command runs with (Hydra composes the release=gpu preset)."""
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "trainer" / "config"), version_base=None):
        cfg = compose(config_name=cmd[4], overrides=overrides(cmd))
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return flat


def gpu_env(**env: str) -> dict[str, str]:
    return {"USE_CUDA": "1", "N_GPUS_PER_NODE": "8", **env}


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", ROOT_SCRIPTS + EXPERIMENT_SCRIPTS + ["scripts/launch_common.sh"])
def test_scripts_are_strict_bash(script):
    path = ROOT / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash") or script.endswith("launch_common.sh")
    if not script.endswith("launch_common.sh"):
        assert os.access(path, os.X_OK), f"{script} is not executable"
        assert "set -euo pipefail" in text and "launch_common.sh" in text
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_python_detection_prefers_the_repo_venv():
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    env.update(DRY_RUN="1", USE_CUDA="0")
    out = subprocess.run(["bash", str(ROOT / "run_local_sdpo.sh")], cwd=ROOT, env=env, capture_output=True, text=True)
    first = shlex.split(out.stdout.splitlines()[-1])[0]
    venv = ROOT / ".venv" / "bin" / "python"
    assert first == (str(venv) if venv.exists() else first) and first in (str(venv), "python", "python3")


# ----------------------------------------------------------------------------------------------
# run_local_sdpo.sh (MOPD)


def test_sdpo_cpu_default_runs_the_embedded_default_with_yaml_defaults():
    result = run("run_local_sdpo.sh")
    (cmd,) = commands(result)
    assert EMBEDDED_LINE in result.stderr.splitlines()
    assert cmd == [sys.executable, "-m", "trainer.main", "--config-name", "mopd"]


def test_sdpo_cpu_forwards_only_flags_that_are_set_and_extra_args_go_last():
    cmd = command(
        "run_local_sdpo.sh",
        "trainer.total_training_steps=3",
        f"{SD}.alpha=0.25",
        INCLUDE_FAILURE_SOLUTION="False",
        ALPHA="1.0",
    )
    assert overrides(cmd) == [
        f"{SD}.include_failure_solution=false",
        f"{SD}.alpha=1.0",
        "trainer.total_training_steps=3",
        f"{SD}.alpha=0.25",
    ]


def test_sdpo_env_flags_map_to_their_keys():
    env = dict(
        DATA_PATH="datasets/lcb_v6",
        MODEL_PATH="/models/qwen",
        EXPERIMENT="exp1",
        TRAIN_BATCH_SIZE="4",
        ROLLOUT_N="2",
        MINI_BATCH_SIZE="4",
        LR="3e-6",
        ALPHA="0.0",
        DISTILLATION_TOPK="20",
        DONT_REPROMPT_ON_SELF_SUCCESS="False",
        INCLUDE_ENVIRONMENT_FEEDBACK="false",
        SUMMARIZE_SOLUTIONS="True",
        SUMMARY_FROM_ALL="True",
        SUMMARY_K="7",
        PEER_CONTROL_MATCH="token",
        N_GPUS_PER_NODE="2",
        TEACHER_UPDATE_RATE="0.1",
        INCLUDE_PRIMARY_SOLUTION="True",
        INCLUDE_ANOTHER_SOLUTION="False",
        FAILURE_SOLUTION_CONDITION="when_no_solution",
    )
    got = as_dict(command("run_local_sdpo.sh", **env))
    assert got == {
        "actor_rollout_ref.model.path": "/models/qwen",
        "data.train_files": "datasets/lcb_v6/train.parquet",
        "data.val_files": "datasets/lcb_v6/test.parquet",
        "data.max_prompt_length": "2048",
        "trainer.experiment_name": "exp1",
        "data.train_batch_size": "4",
        f"{ROLLOUT}.n": "2",
        f"{ACTOR}.ppo_mini_batch_size": "4",
        f"{ACTOR}.optim.lr": "3e-6",
        "trainer.n_gpus_per_node": "2",
        f"{SD}.alpha": "0.0",
        f"{SD}.distillation_topk": "20",
        f"{SD}.dont_reprompt_on_self_success": "false",
        f"{SD}.include_environment_feedback": "false",
        f"{SD}.summarize_solutions": "true",
        f"{SD}.summary_from_all": "true",
        f"{SD}.summary_k": "7",
        f"{SD}.peer_control_match": "token",
        f"{SD}.teacher_update_rate": "0.1",
        f"{SD}.include_primary_solution": "true",
        f"{SD}.include_another_solution": "false",
        f"{SD}.failure_solution_condition": "when_no_solution",
    }


def test_sdpo_gpu_uses_the_release_settings():
    cmd = command("run_local_sdpo.sh", "trainer.save_freq=10", **gpu_env())
    got = as_dict(cmd)
    expected = {  # what depends on the machine or the script: on the command line
        "release": "gpu",
        "actor_rollout_ref.model.path": "Qwen/Qwen3-4B-Instruct-2507",
        "data.train_files": "datasets/lcb_v6/train.parquet",
        "data.max_response_length": "4096",
        f"{ROLLOUT}.name": EXPECTED_ROLLOUT,
        "trainer.n_gpus_per_node": "8",
        f"{SD}.include_primary_solution": "true",
        f"{SD}.include_another_solution": "true",
        f"{SD}.include_failure_solution": "true",
        f"{SD}.failure_solution_condition": "always",
        "trainer.save_freq": "10",
    }
    assert {k: got.get(k) for k in expected} == expected
    release = {  # the release's fixed settings: from the release=gpu preset, as python -m trainer.main users get them
        "data.train_batch_size": 32,
        f"{ROLLOUT}.n": 8,
        f"{ACTOR}.ppo_mini_batch_size": 32,
        f"{ACTOR}.optim.lr": 1e-5,
        "data.max_prompt_length": 2048,
        "data.max_response_length": 4096,
        f"{SD}.max_reprompt_len": 10240,
        f"{ROLLOUT}.val_kwargs.n": 8,
        "trainer.test_freq": 5,
        "trainer.total_epochs": 30,
        "actor_rollout_ref.model.dtype": "bfloat16",
        "data.apply_chat_template_kwargs.enable_thinking": False,
        "trainer.logger": ["console", "jsonl", "wandb"],
        f"{ROLLOUT}.val_kwargs.temperature": 0.6,
        f"{ROLLOUT}.val_kwargs.top_p": 0.95,
        "algorithm.rollout_correction.rollout_is": "token",
        f"{ACTOR}.optim.warmup_style": "constant",
        "trainer.total_training_steps": None,
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        f"{ACTOR}.ppo_micro_batch_size_per_gpu": 1,
        f"{ACTOR}.optim.lr_warmup_steps": 10,
        "trainer.n_gpus_per_node": 8,
        "trainer.save_freq": 10,
        "actor_rollout_ref.model.use_remove_padding": True,
    }
    effective = composed(cmd)
    assert {k: effective.get(k) for k in release} == release


def test_release_preset_is_a_hydra_choice_and_off_by_default():
    plain = composed([sys.executable, "-m", "trainer.main", "--config-name", "mopd"])
    assert plain["data.train_batch_size"] == 16 and plain["trainer.logger"] == ["console", "jsonl"]
    gpu = composed(
        [sys.executable, "-m", "trainer.main", "--config-name", "grpo", "release=gpu", "data.train_batch_size=8"]
    )
    assert gpu["data.train_batch_size"] == 8 and gpu[f"{ACTOR}.optim.lr"] == 1e-5  # command line wins
    assert gpu[f"{ACTOR}.policy_loss.loss_mode"] == "grpo"


def test_sdpo_gpu_env_overrides_the_release_defaults():
    got = as_dict(
        command("run_local_sdpo.sh", **gpu_env(INCLUDE_FAILURE_SOLUTION="False", MODEL_PATH="m", ROLLOUT_N="4"))
    )
    assert got[f"{SD}.include_failure_solution"] == "false"
    assert got["actor_rollout_ref.model.path"] == "m" and got[f"{ROLLOUT}.n"] == "4"


def test_peer_control_pins_the_2s1f_budget():
    result = run("run_local_sdpo.sh", PEER_CONTROL_MODE="random_peer", INCLUDE_FAILURE_SOLUTION="False")
    got = as_dict(commands(result)[0])
    assert got[f"{SD}.peer_control_mode"] == "random_peer"
    assert got[f"{SD}.include_another_solution"] == "true" and got[f"{SD}.include_failure_solution"] == "true"
    assert got[f"{SD}.failure_solution_condition"] == "always" and got[f"{SD}.summarize_solutions"] == "false"
    assert "pinning the 2S1F budget" in result.stderr
    unpinned = as_dict(command("run_local_sdpo.sh", PEER_CONTROL_MODE="none", INCLUDE_FAILURE_SOLUTION="False"))
    assert unpinned == {f"{SD}.include_failure_solution": "false", f"{SD}.peer_control_mode": "none"}


def test_extra_args_with_spaces_and_quotes_survive_the_printed_command():
    odd = ["trainer.experiment_name=my run", "data.apply_chat_template_kwargs={a: 'b'}", "x=it's"]
    assert overrides(command("run_local_grpo.sh", *odd)) == odd


def test_bad_boolean_flag_is_a_clear_error():
    result = run("run_local_sdpo.sh", INCLUDE_FAILURE_SOLUTION="maybe")
    assert result.returncode == 2
    assert "INCLUDE_FAILURE_SOLUTION must be True or False, got 'maybe'" in result.stderr
    assert result.stdout == ""


def test_cpu_data_path_gets_the_release_prompt_limit_unless_set():
    # The YAML's 256 tokens fit the embedded task only: every SciKnowEval prompt would be filtered out.
    got = as_dict(command("run_local_sdpo.sh", DATA_PATH="datasets/sciknoweval/chemistry"))
    assert got["data.max_prompt_length"] == "2048"
    got = as_dict(command("run_local_sdpo.sh", DATA_PATH="datasets/sciknoweval/chemistry", MAX_PROMPT_LENGTH="4096"))
    assert got["data.max_prompt_length"] == "4096"
    assert "data.max_prompt_length" not in as_dict(command("run_local_sdpo.sh"))


def test_missing_data_stops_before_launching():
    result = run("run_local_sdpo.sh", dry=False, DATA_PATH="/nonexistent/lcb")
    assert result.returncode == 2
    assert "/nonexistent/lcb/train.parquet not found" in result.stderr


# ----------------------------------------------------------------------------------------------
# run_local_grpo.sh, run_ts_sdpo.sh


def test_grpo_script():
    cmd = command("run_local_grpo.sh", "x.y=1", DATA_PATH="d", LR="1e-6")
    assert cmd[4] == "grpo" and overrides(cmd) == [
        "data.train_files=d/train.parquet",
        "data.val_files=d/test.parquet",
        "data.max_prompt_length=2048",
        f"{ACTOR}.optim.lr=1e-6",
        "x.y=1",
    ]
    got = as_dict(command("run_local_grpo.sh", **gpu_env()))
    assert got["actor_rollout_ref.model.path"] == "Qwen/Qwen3-4B" and got["data.max_response_length"] == "8192"
    assert not any(k.startswith(SD) for k in got)


def test_ts_without_teacher_fails_with_a_clear_message():
    result = run("run_ts_sdpo.sh", MODEL_PATH="/models/student")
    assert result.returncode == 2 and result.stdout == ""
    assert "TEACHER_MODEL_PATH is not set" in result.stderr and "TEACHER_MODEL_PATH=" in result.stderr
    assert run("run_ts_sdpo.sh", **gpu_env()).returncode == 2


def test_ts_sets_the_frozen_external_teacher_and_primary_only_context():
    cmd = command("run_ts_sdpo.sh", "extra=1", MODEL_PATH="/s", TEACHER_MODEL_PATH="/t", DATA_PATH="d")
    got = as_dict(cmd)
    assert cmd[4] == "sdpo" and overrides(cmd)[-1] == "extra=1"
    assert got["actor_rollout_ref.ref.model.path"] == "/t" and got["actor_rollout_ref.model.path"] == "/s"
    assert got[f"{SD}.teacher_update_rate"] == "0.0"
    assert (
        got[f"{SD}.include_primary_solution"],
        got[f"{SD}.include_another_solution"],
        got[f"{SD}.include_failure_solution"],
    ) == ("true", "false", "false")


def test_ts_embedded_default_uses_the_embedded_base_model_as_teacher():
    result = run("run_ts_sdpo.sh")
    got = as_dict(commands(result)[0])
    assert EMBEDDED_LINE in result.stderr
    assert got["actor_rollout_ref.ref.model.path"] == "embedded" and "actor_rollout_ref.model.path" not in got


# ----------------------------------------------------------------------------------------------
# Experiment sweeps


@pytest.fixture()
def datasets_dir(tmp_path):
    for name in ("sciknoweval/chemistry", "tooluse"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "train.parquet").touch()
        (tmp_path / name / "test.parquet").touch()
    return tmp_path


def test_generalization_sdpo_sweep(datasets_dir):
    result = run(
        "experiments/generalization/run_sdpo_all.sh",
        "trainer.save_freq=5",
        DATASETS_DIR=str(datasets_dir),
        N_GPUS_PER_NODE="8",
    )
    cmds = commands(result)
    assert len(cmds) == 4  # 2 models x the 2 datasets present
    for missing in ("sciknoweval/biology", "sciknoweval/material", "sciknoweval/physics"):
        assert f"skipping {missing}" in result.stderr
    models = [as_dict(c)["actor_rollout_ref.model.path"] for c in cmds]
    assert models == ["Qwen/Qwen3-8B"] * 2 + ["allenai/Olmo-3-7B-Instruct"] * 2
    for cmd in cmds:
        got = as_dict(cmd)
        assert cmd[4] == "sdpo" and overrides(cmd)[-1] == "trainer.save_freq=5"
        assert (got[f"{SD}.alpha"], got[f"{SD}.distillation_topk"], got[f"{SD}.include_environment_feedback"]) == (
            "0.5",
            "100",
            "false",
        )
        assert got[f"{ROLLOUT}.val_kwargs.n"] == "16" and got["release"] == "gpu"
        effective = composed(cmd)
        assert effective["data.train_batch_size"] == 32
        assert effective[f"{ACTOR}.ppo_mini_batch_size"] == 32 and effective[f"{ACTOR}.optim.lr"] == 1e-5
    assert as_dict(cmds[0])["data.train_files"] == f"{datasets_dir}/sciknoweval/chemistry/train.parquet"
    assert len({as_dict(c)["trainer.experiment_name"] for c in cmds}) == 4


def test_generalization_grpo_sweep(datasets_dir):
    result = run(
        "experiments/generalization/run_baseline_grpo_all.sh",
        DATASETS_DIR=str(datasets_dir),
        MODELS="Qwen/Qwen3-8B",
        N_GPUS_PER_NODE="8",
    )
    cmds = commands(result)
    grid = [(as_dict(c)[f"{ACTOR}.ppo_mini_batch_size"], as_dict(c)[f"{ACTOR}.optim.lr"]) for c in cmds]
    assert grid == [("8", "1e-5"), ("8", "1e-6"), ("32", "1e-5"), ("32", "1e-6")] * 2
    assert all(c[4] == "grpo" and as_dict(c)[f"{ROLLOUT}.val_kwargs.n"] == "16" for c in cmds)
    assert len({as_dict(c)["trainer.experiment_name"] for c in cmds}) == 8


def test_generalization_skips_everything_with_a_message(tmp_path):
    result = run("experiments/generalization/run_sdpo_all.sh", DATASETS_DIR=str(tmp_path))
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.count("skipping") == 10


def test_rich_feedback_scripts():
    got = as_dict(command("experiments/rich_feedback/run_sdpo.sh", N_GPUS_PER_NODE="8"))
    expected = {
        "actor_rollout_ref.model.path": "Qwen/Qwen3-8B",
        "data.train_files": "datasets/lcb_v6/train.parquet",
        f"{SD}.alpha": "1.0",
        f"{SD}.distillation_topk": "20",
        f"{SD}.teacher_update_rate": "0.01",
        f"{ACTOR}.ppo_mini_batch_size": "1",
        f"{ACTOR}.optim.lr": "1e-6",
        f"{ACTOR}.optim.lr_warmup_steps": "0",
        f"{ROLLOUT}.val_kwargs.n": "4",
        f"{SD}.include_environment_feedback": "true",
    }
    assert {k: got.get(k) for k in expected} == expected
    got = as_dict(command("experiments/rich_feedback/run_baseline_grpo.sh", "a=1", N_GPUS_PER_NODE="8"))
    assert (got[f"{ACTOR}.ppo_mini_batch_size"], got[f"{ACTOR}.optim.lr"], got[f"{ROLLOUT}.val_kwargs.n"]) == (
        "8",
        "1e-6",
        "4",
    )
    assert got["a"] == "1" and not any(k.startswith(SD) for k in got)


def test_experiments_need_cuda_unless_dry_run():
    result = run("experiments/rich_feedback/run_baseline_grpo.sh", dry=False)
    assert result.returncode == 2 and "needs a CUDA device" in result.stderr and "DRY_RUN=1" in result.stderr


# ----------------------------------------------------------------------------------------------
# Every printed command is a valid trainer config


def test_printed_commands_compose_and_validate(monkeypatch, datasets_dir):
    monkeypatch.setattr(config_schema, "_module_available", lambda name: True)  # vllm/wandb may be absent here
    cmds = [
        command("run_local_sdpo.sh", **gpu_env()),
        command("run_local_sdpo.sh", PEER_CONTROL_MODE="unrelated_prompt", ALPHA="1.0"),
        command("run_local_grpo.sh", **gpu_env()),
        command("run_ts_sdpo.sh", **gpu_env(TEACHER_MODEL_PATH="Qwen/Qwen3-14B")),
        command("run_ts_sdpo.sh"),
        commands(
            run(
                "experiments/generalization/run_sdpo_all.sh",
                DATASETS_DIR=str(datasets_dir),
                MODELS="m",
                METHOD="mopd",
                N_GPUS_PER_NODE="8",
            )
        )[0],
        commands(
            run(
                "experiments/generalization/run_baseline_grpo_all.sh",
                DATASETS_DIR=str(datasets_dir),
                MODELS="m",
                N_GPUS_PER_NODE="8",
            )
        )[0],
        command("experiments/rich_feedback/run_sdpo.sh", N_GPUS_PER_NODE="8"),
        command("experiments/rich_feedback/run_baseline_grpo.sh", N_GPUS_PER_NODE="8"),
    ]
    with initialize_config_dir(config_dir=str(ROOT / "trainer" / "config"), version_base=None):
        for cmd in cmds:
            validate_config(compose(config_name=cmd[4], overrides=overrides(cmd)))


def test_rollout_engine_choice_is_said_in_one_line():
    gpu = run("run_local_sdpo.sh", **gpu_env())
    assert as_dict(commands(gpu)[0])[f"{ROLLOUT}.name"] == EXPECTED_ROLLOUT
    assert ("vllm is not installed: rollout with hf" in gpu.stderr) == (not HAVE_VLLM)
    cpu = run("run_local_sdpo.sh")
    assert any(
        line.endswith("no CUDA device: rollout with hf (vllm is the default on CUDA machines that have it)")
        for line in cpu.stderr.splitlines()
    )
    chosen = run("run_local_sdpo.sh", **gpu_env(ROLLOUT_NAME="hf"))
    assert as_dict(commands(chosen)[0])[f"{ROLLOUT}.name"] == "hf" and "rollout with hf" not in chosen.stderr


def test_a_too_old_vllm_falls_back_to_hf_with_one_line(tmp_path):
    """Installed is not enough: a vLLM that the engine cannot use makes the GPU launch choose hf and say why."""
    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "0.10.0"\n')
    gpu = run("run_local_grpo.sh", **gpu_env(PYTHONPATH=str(tmp_path)))
    assert as_dict(commands(gpu)[0])[f"{ROLLOUT}.name"] == "hf"
    notes = [line for line in gpu.stderr.splitlines() if "rollout with hf instead" in line]
    assert len(notes) == 1 and "vLLM 0.10.0 is not supported" in notes[0], gpu.stderr
