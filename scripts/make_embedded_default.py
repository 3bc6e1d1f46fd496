#!/usr/bin/env python
"""Build the embedded default: the arithmetic task's parquet splits and a tiny Qwen3 base model.

    python scripts/make_embedded_default.py            # writes datasets/embedded/ (phases 1-3)
    python scripts/make_embedded_default.py --init-model PREVIOUS_BASE --out-dir /tmp/emb   # phase 3 only

The same as ``mopd-make-embedded-default``. The recipe (its phases, how the shipped base was made, what it
measures) is ``mopd/embedded/recipe/``: one module per step, documented in its ``__init__``.
"""

from mopd.embedded.recipe.cli import main

if __name__ == "__main__":
    main()
