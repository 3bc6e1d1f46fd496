"""``python scripts/make_embedded_default.py`` / ``mopd-make-embedded-default``: the recipe's command line and
the order of its steps (data, warm start phases 1-3, save + re-measure); see ``mopd.embedded.recipe``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from mopd.common.models import EMBEDDED_DIR
from mopd.embedded.embedded_task import make_problem, problem_space, prompt_messages
from mopd.embedded.recipe.context_phase import train_phase_3
from mopd.embedded.recipe.contexts import chat_prompt, peer_config
from mopd.embedded.recipe.data_phase import write_task_splits
from mopd.embedded.recipe.evaluation import Evaluator
from mopd.embedded.recipe.save_phase import save_and_measure
from mopd.embedded.recipe.sft_phases import TORCH_SEED, Progress, build_base_model, train_phases_1_2
from mopd.embedded.tiny_tokenizer import load_tiny_tokenizer

OUT_DIR = EMBEDDED_DIR  # datasets/embedded of the checkout
THREADS = int(os.environ.get("EMBEDDED_THREADS", "2"))  # 2: the numbers in the README
DESCRIPTION = "Build the embedded default: the arithmetic task's parquet splits and a tiny Qwen3 base model."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--p1-ctx-batch", type=int, default=32, help="phase 1: teacher prompts only")
    parser.add_argument("--p1-min-steps", type=int, default=140)
    parser.add_argument("--p1-max-steps", type=int, default=450)
    parser.add_argument("--p1-ctx-acc", type=float, default=0.4, help="phase 1 ends at this with-context acc")
    parser.add_argument("--p2-plain-batch", type=int, default=128, help="phase 2: plain questions + ...")
    parser.add_argument("--p2-ctx-batch", type=int, default=8, help="... teacher prompts")
    parser.add_argument("--p2-ctx-weight", type=float, default=1.0)
    parser.add_argument("--p2-max-steps", type=int, default=400)
    parser.add_argument("--eval-dense-below", type=float, default=0.95)
    parser.add_argument("--eval-n", type=int, default=128, help="test problems in the periodic evaluation")
    parser.add_argument("--target-nc", type=float, default=0.25, help="stop once sampled no-context acc >= this")
    parser.add_argument("--band", type=float, nargs=2, default=(0.15, 0.40), help="acceptable no-context acc")
    parser.add_argument("--min-ctx", type=float, default=0.8, help="...and with-context acc >= this")
    parser.add_argument(
        "--init-model", default=None, help="skip phases 1-2: start phase 3 from this HF model dir (the previous base)"
    )
    parser.add_argument("--p3-steps", type=int, default=250, help="phase 3: the every-method context mixture")
    parser.add_argument("--p3-lr", type=float, default=1e-3)
    parser.add_argument("--p3-warmup", type=int, default=10)
    parser.add_argument("--p3-plain-batch", type=int, default=16)
    parser.add_argument("--p3-ctx-batch", type=int, default=32)
    parser.add_argument("--p3-eval-every", type=int, default=25)
    parser.add_argument(
        "--p3-band",
        type=float,
        nargs=2,
        default=(0.25, 0.45),
        help="phase 3 keeps the last evaluated snapshot whose no-context acc is in this band",
    )
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)

    progress = Progress(started=time.time())
    torch.set_num_threads(THREADS)
    torch.manual_seed(TORCH_SEED)
    torch.use_deterministic_algorithms(True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. data
    train, test = write_task_splits(out_dir)

    # 2. model + SFT phases 1-2 (or the --init-model weights)
    tok = load_tiny_tokenizer()
    cfg = peer_config()
    model, config = build_base_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.3f} M parameters, vocab {config.vocab_size} (tokenizer {len(tok)})")

    sft_pool = [make_problem(a, b) for a, b in problem_space("train")]  # the whole train partition
    plain_prompts = {(p["a"], p["b"]): chat_prompt(tok, prompt_messages(p)) for p in sft_pool}
    evaluator = Evaluator(tok, test, cfg)
    p1_steps = None
    if args.init_model is None:
        _, p1_steps = train_phases_1_2(model, tok, cfg, sft_pool, plain_prompts, evaluator, args, progress)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.init_model, attn_implementation="sdpa", dtype=torch.float32)
        model.train()
        print(f"phases 1-2 skipped: phase 3 starts from {args.init_model}")

    # 3. phase 3: the context mixture of every method
    chosen = train_phase_3(model, tok, sft_pool, plain_prompts, evaluator, args, progress)

    # 4. save + final measurement on the saved model
    # (the facts are gathered after the re-measurement, so the wall time includes it)
    save_and_measure(
        model,
        tok,
        config.bos_token_id,
        evaluator,
        out_dir,
        lambda: {
            "n_train": len(train),
            "n_test": len(test),
            "parameters": n_params,
            "sft_steps": chosen,
            "sft_phase1_steps": p1_steps,
            "sft_phase3_steps": args.p3_steps,
            "init_model": args.init_model,
            "sft_train_seconds": round(progress.train_time, 1),
            "wall_seconds": round(time.time() - progress.started, 1),
            "threads": THREADS,
            "history": progress.history,
            "args": vars(args),
        },
    )
