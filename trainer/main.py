"""Entry point: ``python -m trainer.main --config-name mopd key=value ...`` (console script ``mopd-train``)."""

from __future__ import annotations

import sys
from pathlib import Path

import trainer.config_sections  # noqa: F401  (registers the typed defaults ppo_trainer.yaml starts from)

CONFIG_DIR = str(Path(__file__).resolve().parent / "config")


def run(cfg) -> dict:
    from mopd.common.errors import UserError
    from trainer.config_schema import resolve_aliases, validate_config
    from trainer.memory_plan import check_before_start
    from trainer.ppo_trainer import Trainer

    try:
        resolve_aliases(cfg)
        config = validate_config(cfg)  # the typed tree (trainer/config_sections.py)
        check_before_start(config.to_dict())  # every phase fits the GPU, before any worker starts
        trainer = Trainer(config)
        try:
            return trainer.fit()
        finally:
            trainer.close()
    except KeyboardInterrupt:  # outside the fit loop (which names the checkpoint to resume from): setup or shutdown
        print(
            "[mopd] interrupted (Ctrl-C) outside the training steps (setup or shutdown): no step was cut short",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(130) from None
    except UserError as err:
        # Only the project's own error types become one line; anything else is a bug and keeps its traceback.
        # A worker's error arrives wrapped by Ray (a subclass of both): the user needs the cause, not two tracebacks.
        _exit_with(getattr(err, "cause", None) or err)


def _exit_with(err: BaseException) -> None:
    label = getattr(err, "label", "error")
    print(f"[mopd] {label}: {err}" if label else f"[mopd] {err}", file=sys.stderr, flush=True)
    raise SystemExit(getattr(err, "exit_code", 2)) from None


def main() -> None:
    import hydra

    hydra.main(config_path=CONFIG_DIR, config_name="mopd", version_base=None)(run)()


if __name__ == "__main__":
    main()
