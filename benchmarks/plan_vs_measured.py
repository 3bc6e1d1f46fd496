"""The memory plan against a step-breakdown run's measured peak, per mode (scripts/gpu_check.sh runs it
after the benchmark): same config, same model (the benchmark's workdir holds its config.json).

    python -m benchmarks.plan_vs_measured --json outputs/gpu_check/step_breakdown_0.6b.json \
        --workdir /tmp/mopd_step_breakdown [--device-memory-gb 80]

Prints one line per mode (planned GB, measured peak torch-allocated GB, ratio) and exits 1 when a mode is
outside ``--tolerance`` (default 0.25) of its measurement.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def planned_gb(mode: str, bench_args, workdir: Path, device_memory_gb: float) -> tuple[float, str]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmarks import step_breakdown
    from trainer.main import CONFIG_DIR
    from trainer.memory_plan import GB, plan_memory

    info = json.loads((workdir / "prepared.json").read_text())
    overrides = step_breakdown.overrides_for(bench_args, workdir, workdir / f"run_{mode}", info["model"])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = OmegaConf.to_container(compose(config_name=mode, overrides=overrides), resolve=True)
    plan = plan_memory(cfg, device_memory_gb * GB)
    return plan.peak / GB, plan.peak_phase


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="step_breakdown.py --json output")
    p.add_argument("--workdir", required=True, help="the benchmark's --workdir (its model and task)")
    p.add_argument("--device-memory-gb", type=float, default=None, help="default: the visible GPU's")
    p.add_argument("--tolerance", type=float, default=0.25)
    args = p.parse_args(argv)
    from benchmarks import step_breakdown

    result = json.loads(Path(args.json).read_text())
    command = shlex.split(result["meta"]["command"])[1:]  # the benchmark's own flags
    bench_args = step_breakdown.parse_args([a for a in command if a != "--child"])
    memory = args.device_memory_gb
    if memory is None:
        import torch

        memory = torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else 80.0
    failed = False
    for mode in [m for m in ("mopd", "grpo") if m in result]:
        measured = result[mode]["peak_memory_gb"]
        planned, phase = planned_gb(mode, bench_args, Path(args.workdir), memory)
        ratio = planned / measured if measured else float("inf")
        ok = abs(ratio - 1) <= args.tolerance
        failed |= not ok
        print(
            f"[plan] {mode}: planned {planned:.1f} GB ({phase}) vs measured peak {measured:.1f} GB: "
            f"{ratio:.2f}x {'ok' if ok else f'OUTSIDE +-{args.tolerance:.0%}'}",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
