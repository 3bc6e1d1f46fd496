"""Step 4 of the recipe: save the chosen model (HF format + tokenizer) and re-measure it from the saved files.

The folder is written under ``.base_model.tmp`` and swapped into place only once the stats are written, so
a failed or interrupted run leaves the previous ``base_model`` whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mopd.common.io import write_json
from mopd.embedded.embedded_task import DATA_SOURCE
from mopd.embedded.recipe.contexts import EVAL_CONTEXTS
from mopd.embedded.recipe.evaluation import MAX_NEW_TOKENS, Evaluator


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place (rename is atomic; the old copy is removed after)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_and_measure(
    model, tok, bos_token_id: int, evaluator: Evaluator, out_dir: Path, run_facts: Callable[[], dict]
) -> dict:
    """Save ``model`` + ``tok`` to ``out_dir/base_model`` with ``embedded_stats.json``: the evaluation of the
    reloaded files, then ``run_facts()`` (what the run did: steps, seconds, args, history; called after the
    evaluation) and the task's numbers. Returns the stats."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    final = out_dir / "base_model"
    tmp = out_dir / ".base_model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=bos_token_id,
    )
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp), attn_implementation="sdpa")
    loaded_tok = AutoTokenizer.from_pretrained(str(tmp))
    stats = evaluator.full(loaded)
    stats.update({"task": DATA_SOURCE, **run_facts()})
    stats["eval"] = (
        "held-out test split; sampled = T 1.0, top_k 0, top_p 1.0; no-context sampled acc is mean@8; "
        "with-context prompts show 1-2 correct peers and 1 failed peer (2-success-1-failure config); "
        "context_sampled_acc: a failed rollout's teacher prompt in a group of 8, per method context "
        "(2 samples per problem): " + "; ".join(f"{k} = {v[3]}" for k, v in EVAL_CONTEXTS.items())
    )
    assert len(loaded_tok) == len(tok)
    write_json(tmp / "embedded_stats.json", stats, sort_keys=True)
    replace_dir(tmp, final)
    print(json.dumps({k: v for k, v in stats.items() if k not in ("history", "args")}, indent=1))
    print(
        f"saved {final} ({sum(f.stat().st_size for f in final.iterdir()) / 1e6:.1f} MB); "
        f"wall time {stats['wall_seconds']:.0f}s"
    )
    return stats
