"""The embedded default's recipe: the arithmetic task's parquet splits and a tiny Qwen3 base model.

    python scripts/make_embedded_default.py            # writes datasets/embedded/ (phases 1-3)
    python scripts/make_embedded_default.py --init-model PREVIOUS_BASE --out-dir /tmp/emb   # phase 3 only

The shipped base (2026-11-28, second rework) is ``EMBEDDED_THREADS=1 python scripts/make_embedded_default.py
--init-model <the phase-2 base, git show 706d2b0:datasets/embedded/base_model>`` (phase 3 only, 250 steps,
9.8 min on the 2-core machine shared with a CI run; the snapshot of step 225 was kept).

CPU-only, seeded, deterministic torch algorithms, 2 threads; ~10 minutes on 2 idle cores. Steps:

1. ``datasets/embedded/{train,test}.parquet`` from ``mopd.embedded.embedded_task`` (2000 / 256 problems).
2. A ~1 M parameter Qwen3 (random init, the project's byte-level tokenizer) trained by supervised
   fine-tuning on chat-templated examples, loss on the answer tokens + ``<|im_end|>`` only. The examples
   are (a) plain questions and (b) teacher prompts: simulated groups of 8 rollouts (some correct, some
   plausible wrong answers) go through ``mopd.core.peers.select_peers`` and ``mopd.core.reprompt.render_teacher_messages``
   exactly as training renders them; the target is always the correct answer, so the model learns to read
   peer evidence the way a pretrained LLM reads demonstrations.
   Phase 1 trains on MOPD (2S1F) teacher prompts only, until the model copies a shown correct answer
   (reading context is learned first; trained together, both skills appear at the same time and the base
   would have nothing to learn from its teacher). Phase 2 adds plain questions (128 per step, plus 8
   teacher prompts so the context skill is kept) and stops at the first evaluation where the sampled
   (T=1) no-context accuracy on held-out questions reaches ``--target-nc`` while the 2S1F-context accuracy
   stays >= ``--min-ctx`` (else the in-band snapshot that reads context best).
3. Phase 3 teaches every context the methods render: 32 teacher prompts (+ 16 plain questions) per step,
   rendered with the configuration of a method drawn uniformly -- SDPO (``sdpo.yaml``: one correct peer;
   the rollout's own verifier feedback when no success is shown), MOPD 2S1F (``mopd.yaml``) and
   positive-only (2S, no failure peer) -- plus 20% failure-only prompts (one failed peer, no feedback);
   40% of the other groups have no success (there SDPO's teacher sees only the feedback). Targets: the
   correct answer where the context shows one; where it shows none, and for the plain questions, the
   starting model's own sampled answer to the plain question, redrawn (up to 4 samples) when it repeats
   a wrong answer the context names -- "answer as you would alone, minus the shown mistake". Correct
   targets there would teach arithmetic: the first rework did, and its no-context accuracy rose to
   0.53, out of the band (issue 12's 25-45%). Phase 3 has its
   own seeds and optimizer, so its result depends only on the weights it starts from; ``--init-model DIR``
   skips phases 1-2 and starts from DIR (how the shipped base was made: from the previous base, which is
   what phases 1-2 produce). It keeps the last evaluated snapshot (every 25 steps) whose no-context
   accuracy is in ``--p3-band`` (25-45%; if none is, the closest, with a warning). The shipped base:
   0.30 without context; one correct peer (SDPO) 0.76, 2S1F 0.94, two correct peers 0.93, a failed peer
   only 0.23. Prompts with only the rollout's own feedback (SDPO, 0.13) or a failed peer and feedback
   (MOPD, 0.04) are still read worse than no context: long contexts without an answer to copy leave
   the model's arithmetic worse (6-10% of its answers there repeat a number the prompt shows, the
   rest are other wrong numbers; the previous base behaved alike); see ``embedded_stats.json``.
4. The model is saved to ``datasets/embedded/base_model`` (HF format + tokenizer) with
   ``embedded_stats.json``: the numbers re-measured on the saved model -- sampled accuracy without context
   (mean@8) and per teacher context (``context_sampled_acc``) -- and the evaluation history.

Reproducibility: seeded, deterministic torch algorithms, 2 threads. Phases 1-2 wrote bit-identical weights
in two runs (2026-11-21/22: the previous base, SFT step 520) and diverged once in the first steps (float
reduction order is the usual suspect), so treat the files in the repository as the reference.

Modules, one per step: ``data_phase`` (1), ``contexts`` (the simulated groups and the teacher prompts they
render), ``sft_phases`` (2: the model, phases 1-2), ``context_phase`` (3: phase 3), ``evaluation`` (the
held-out measurements), ``save_phase`` (4: save atomically + re-measure), ``cli`` (the command line and
the order of the steps; ``scripts/make_embedded_default.py`` and ``mopd-make-embedded-default`` call it).
"""
