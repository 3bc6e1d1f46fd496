"""The release's memory plans as a Markdown table (docs/performance.md, "Memory plan at release scale").

    python -m benchmarks.memory_plan_table > table.md

Qwen3-4B and Qwen3-8B (MOPD with 4,096-token responses, GRPO with the launch script's 8,192), and a
Qwen3-4B student with a Qwen3-14B teacher (run_ts_sdpo.sh: sdpo config), each with the `hf` and the
`vllm` rollout, on 8 x H100-80GB and 4 x GH200-96GB; `release=gpu` otherwise. Shapes are the published
config.json fields (written to a temp folder: the plan reads nothing else).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

QWEN3 = {  # the published config.json fields the plan reads
    "Qwen3-4B": dict(
        hidden_size=2560,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=9728,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "Qwen3-8B": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
    "Qwen3-14B": dict(
        hidden_size=5120,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=17408,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
}
MACHINES = {"8 x H100-80GB": (8, 80), "4 x GH200-96GB": (4, 96)}
SETUPS = [  # (label, config, student, teacher, response length)
    ("Qwen3-4B MOPD", "mopd", "Qwen3-4B", None, 4096),
    ("Qwen3-4B GRPO", "grpo", "Qwen3-4B", None, 8192),
    ("Qwen3-8B MOPD", "mopd", "Qwen3-8B", None, 4096),
    ("Qwen3-8B GRPO", "grpo", "Qwen3-8B", None, 8192),
    ("Qwen3-4B <- Qwen3-14B teacher (SDPO)", "sdpo", "Qwen3-4B", "Qwen3-14B", 4096),
]

# Variations that do not fit as given: what the plan proposes (hf rollout unless named).
VARIATIONS = [  # (label, config, student, teacher, response, gpus, GB, extra overrides)
    (
        "Qwen3-8B MOPD, no gradient checkpointing",
        "mopd",
        "Qwen3-8B",
        None,
        4096,
        8,
        80,
        ["actor_rollout_ref.model.enable_gradient_checkpointing=false"],
    ),
    (
        "Qwen3-8B MOPD, hf budget 524,288 tokens",
        "mopd",
        "Qwen3-8B",
        None,
        4096,
        8,
        80,
        ["actor_rollout_ref.rollout.generate_max_token_len_per_gpu=524288"],
    ),
    (
        "Qwen3-8B MOPD, vllm at 0.7 of the GPU",
        "mopd",
        "Qwen3-8B",
        None,
        4096,
        8,
        80,
        ["actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.gpu_memory_utilization=0.7"],
    ),
    ("Qwen3-8B MOPD on 2 GPUs", "mopd", "Qwen3-8B", None, 4096, 2, 80, []),
    ("Qwen3-4B <- Qwen3-14B teacher on 2 GPUs", "sdpo", "Qwen3-4B", "Qwen3-14B", 4096, 2, 80, []),
    ("Qwen3-8B MOPD on 1 x 16 GB", "mopd", "Qwen3-8B", None, 4096, 1, 16, []),
]


def main() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainer.main import CONFIG_DIR
    from trainer.memory_advice import describe_overrides, suggest
    from trainer.memory_plan import GB, PHASE_TITLES, plan_memory

    folder = Path(tempfile.mkdtemp())
    for name, fields in QWEN3.items():
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps({"model_type": "qwen3", **fields}))

    def row(label, config, student, teacher, response, machine, gpus, memory_gb, extra):
        overrides = [
            "release=gpu",
            f"actor_rollout_ref.model.path={folder / student}",
            f"data.max_response_length={response}",
            f"trainer.n_gpus_per_node={gpus}",
            f"trainer.device_memory_gb={memory_gb}",
            *extra,
        ]
        if teacher:
            overrides.append(f"actor_rollout_ref.ref.model.path={folder / teacher}")
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = OmegaConf.to_container(compose(config_name=config, overrides=overrides), resolve=True)
        plan = plan_memory(cfg, memory_gb * GB)
        if plan.fits:
            verdict, change = ("yes (within 10%)" if plan.tight else "yes"), "-"
        else:
            found = suggest(cfg, memory_gb * GB)
            verdict = "no"
            change = f"`{describe_overrides(found)}`" if found else "none found (larger GPUs or a smaller model)"
        rollout = cfg["actor_rollout_ref"]["rollout"]["name"]
        print(
            f"| {label} | {machine} | {rollout} | {PHASE_TITLES[plan.peak_phase]} | "
            f"{plan.peak / GB:.1f} / {plan.usable / GB:.1f} | {verdict} | {change} |"
        )

    print("| setup | GPUs | rollout | peak phase | peak GB / usable | fits | smallest change that fits |")
    print("|---|---|---|---|---|---|---|")
    for label, config, student, teacher, response in SETUPS:
        for machine, (gpus, memory_gb) in MACHINES.items():
            for rollout in ("hf", "vllm"):
                row(
                    label,
                    config,
                    student,
                    teacher,
                    response,
                    machine,
                    gpus,
                    memory_gb,
                    [f"actor_rollout_ref.rollout.name={rollout}"],
                )
    for label, config, student, teacher, response, gpus, memory_gb, extra in VARIATIONS:
        row(label, config, student, teacher, response, f"{gpus} x {memory_gb} GB", gpus, memory_gb, extra)


if __name__ == "__main__":
    main()
