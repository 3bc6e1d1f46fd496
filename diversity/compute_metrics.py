"""Per-method, per-prompt solution-diversity metrics and pass@k (see docs/diversity.md).

    python diversity/compute_metrics.py --run mopd=runs/mopd/rollouts --run base=candidate_responses.jsonl \
        --task code --ks 1 2 4 8 --intersect-prompts --max-prompts 300 --max-responses-per-prompt 8 \
        --output-dir diversity_outputs

A run PATH is a candidate_responses.jsonl (analysis/prepare_rollout_dataset.py), a directory holding
one, a rollout dump <step>.jsonl of the trainer, or a rollout_data_dir (all steps merged).

Installed, the same command is ``mopd-diversity-metrics``.
"""

from mopd.diversity.cli import compute_metrics_main as main

if __name__ == "__main__":
    main()
