"""Entry point: ``python -m trainer.main --config-name mopd key=value ...`` (console script ``mopd-train``)."""

from __future__ import annotations

import sys
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent / "config")


def run(cfg) -> dict:
    from omegaconf import OmegaConf

    from mopd.config import ConfigError
    from trainer.config_schema import validate_config
    from trainer.ppo_trainer import Trainer

    try:
        validate_config(cfg)
    except ConfigError as err:
        print(f"[mopd] config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        trainer = Trainer(container)
    except (FileNotFoundError, ValueError) as err:
        # A worker's error arrives wrapped by Ray; the user needs the cause, not two tracebacks.
        print(f"[mopd] error: {getattr(err, 'cause', None) or err}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return trainer.fit()
    finally:
        trainer.close()


def main() -> None:
    import hydra

    hydra.main(config_path=CONFIG_DIR, config_name="mopd", version_base=None)(run)()


if __name__ == "__main__":
    main()
