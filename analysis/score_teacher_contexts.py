#!/usr/bin/env python
"""Teacher score of each response under each context: mean token log-prob (plus sum, lengths, truncation).

    python analysis/score_teacher_contexts.py --variants DATA/context_variants.jsonl \
        --targets DATA/candidate_responses.jsonl --output DATA/teacher_scores.jsonl --model embedded \
        --self-target-only

Default input = the trainer's chat-templated teacher prompt + the response tokens (+ eos); --raw-text
scores the release's raw text instead. Details: mopd/analysis/scoring.py; docs/analysis.md.

Installed, the same command is ``mopd-score-teacher-contexts``.
"""

from mopd.analysis.cli import score_teacher_contexts_main as main

if __name__ == "__main__":
    raise SystemExit(main())
