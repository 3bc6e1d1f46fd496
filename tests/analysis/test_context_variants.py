"""build_context_variants: every condition, rendered with the training templates and peer rules."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mopd.analysis import variants as V
from mopd.core.config import SelfDistillationConfig
from mopd.core.peers import Rollout, select_peers
from mopd.core.reprompt import render_teacher_messages

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = {"role": "system", "content": "Answer with a number."}


def cand(pid, k, text, reward, summary=None, feedback=None, question=None):
    tagged = summary is not None
    return {
        "prompt_id": pid,
        "response_id": f"{pid}_r{k}",
        "response_index": k,
        "uid": pid,
        "prompt": question or f"Question {pid}?",
        "prompt_messages": [SYSTEM, {"role": "user", "content": question or f"Question {pid}?"}],
        "chat_template_kwargs": {},
        "student_input_text": "<student prompt>",
        "response_text": text + (f" <summary>{summary}</summary>" if tagged else ""),
        "reward": reward,
        "success": reward >= 1.0,
        "success_threshold": 1.0,
        "summary_text_effective": summary if tagged else text[:300],
        "summary_has_tag": tagged,
        "summary_is_fallback": not tagged,
        "feedback_text": feedback or "",
        "has_feedback": bool(feedback),
        "difficulty_bucket": "medium",
    }


@pytest.fixture()
def candidates():
    a = [
        cand("a", 0, "42", 1.0, summary="added tens then ones"),
        cand("a", 1, "41", 0.0, feedback="Your answer 41 is wrong."),
        cand("a", 2, "42.", 1.0),
        cand("a", 3, "42!", 1.0, summary="column addition"),
        cand("a", 4, "40", 0.0, feedback="Your answer 40 is wrong."),
    ]
    b = [cand("b", 0, "7", 1.0, summary="b-summary"), cand("b", 1, "8", 0.0, feedback="wrong")]
    c = [cand("c", 0, "1", 0.0, feedback="nope"), cand("c", 1, "2", 0.0, feedback="nope")]
    return a + b + c


def rows_by(rows, condition, response_id):
    (row,) = [r for r in rows if r["condition"] == condition and r["response_id"] == response_id]
    return row


def test_every_release_condition_gives_one_row_per_candidate(candidates):
    rows = V.build_variant_rows(candidates)
    assert len(rows) == len(V.CONDITION_NAMES) * len(candidates)
    assert [r["condition"] for r in rows[:: len(candidates)]] == V.CONDITION_NAMES
    assert len({r["variant_id"] for r in rows}) == len(rows)
    assert rows == V.build_variant_rows(candidates)  # deterministic
    for row in rows:
        assert row["teacher_messages"][0] == SYSTEM  # the system prompt is kept verbatim
        assert row["assembled_context_text"] == row["teacher_messages"][-1]["content"]
        pieces = V.pieces_from_spans(row["assembled_context_text"], row["peer_context_spans"])
        assert "".join(t for t, _ in pieces) == row["assembled_context_text"]
        assert row["effective"] == all(row["sections_used"][s] for s in row["required_sections"])


def test_2s1f_equals_the_training_renderer(candidates):
    """Where training's draw is forced (exactly one failure peer), 2S1F is byte-identical to training."""
    config = SelfDistillationConfig(
        include_another_solution=True,
        include_failure_solution=True,
        failure_solution_condition="always",
        include_environment_feedback=False,
    )
    group = [c for c in candidates if c["prompt_id"] == "a"]
    rollouts = [
        Rollout(uid="a", reward=c["reward"], text=c["response_text"], feedback=c["feedback_text"] or None)
        for c in group
    ]
    selection = select_peers(rollouts, config, random.Random(0))
    rows = V.build_variant_rows(candidates)
    for i in (1, 4):  # the two failures: each has exactly one failure peer
        training, _ = render_teacher_messages(
            group[i]["prompt_messages"], selection.contexts[i], rollouts, None, config
        )
        assert rows_by(rows, V.TWO_S_ONE_F, f"a_r{i}")["teacher_messages"] == training
    row = rows_by(rows, V.TWO_S_ONE_F, "a_r1")
    text = row["assembled_context_text"]
    assert text.startswith("Question a?\nCorrect solution:\n\n42 <summary>")
    assert "\nAnother successful solution:\n\n42." in text
    assert "\nA known failed solution (avoid repeating this mistake):\n\n40" in text
    assert text.endswith("\n\nCorrectly solve the original question.")
    assert row["evidence_ids"] == ["a_r0::response_full", "a_r2::response_full", "a_r4::response_full"]
    context = [t for t, is_ctx in V.pieces_from_spans(text, row["peer_context_spans"]) if is_ctx]
    assert context == [
        "\nCorrect solution:\n\n42 <summary>added tens then ones</summary>",
        "\nAnother successful solution:\n\n42.",
        "\nA known failed solution (avoid repeating this mistake):\n\n40",
    ]
    assert row["sections_used"] == {
        "solution": True,
        "another_solution": True,
        "failure_solution": True,
        "feedback": False,
        "summary": False,
    }


def test_deterministic_peer_order_never_shows_self(candidates):
    rows = V.build_variant_rows(candidates)
    # a_r0 is a success: its primary is the next success a_r2, another a_r3, failure the first failure a_r1
    assert rows_by(rows, "solution", "a_r0")["evidence_ids"] == ["a_r2::response_full"]
    assert rows_by(rows, "another_solution", "a_r0")["evidence_ids"] == ["a_r3::response_full"]
    assert rows_by(rows, "failure_solution", "a_r0")["evidence_ids"] == ["a_r1::response_full"]
    assert rows_by(rows, "failure_only", "a_r0")["evidence_ids"] == ["a_r1::response_full"]
    assert rows_by(rows, "failure_solution", "a_r1")["evidence_ids"] == ["a_r4::response_full"]
    # b_r0 is the only success of b: no solution for it, so the row is not effective
    row = rows_by(rows, "solution", "b_r0")
    assert row["evidence_ids"] == [] and not row["effective"]
    assert row["assembled_context_text"] == "Question b?"  # no section -> the original question
    for row in rows:
        assert f"{row['response_id']}::response_full" not in row["evidence_ids"]


def test_base_conditions(candidates):
    rows = V.build_variant_rows(candidates)
    base = rows_by(rows, "base", "a_r1")
    assert base["teacher_messages"] == candidates[1]["prompt_messages"]
    assert base["student_input_text"] == "<student prompt>" and base["score_format"] == "default"
    raw = rows_by(rows, "base_raw", "a_r1")
    assert raw["assembled_context_text"] == "Question a?" and raw["score_format"] == "raw"
    shell = rows_by(rows, "base_reprompt", "a_r1")
    assert shell["assembled_context_text"] == "Question a?\n\nCorrectly solve the original question."
    assert not any(shell["sections_used"].values())


def test_feedback_is_the_candidates_own(candidates):
    rows = V.build_variant_rows(candidates)
    row = rows_by(rows, "feedback", "a_r1")
    assert row["assembled_context_text"].endswith(
        "\nThe following is feedback from your unsuccessful earlier attempt:\n\nYour answer 41 is wrong."
        "\n\nCorrectly solve the original question."
    )
    assert row["evidence_ids"] == ["a_r1::feedback"] and row["effective"]
    assert not rows_by(rows, "feedback", "a_r0")["effective"]  # successes have no feedback
    both = rows_by(rows, "solution+feedback", "a_r1")  # environment_feedback_only_without_solution is off (release)
    assert both["sections_used"]["solution"] and both["sections_used"]["feedback"]


def test_summaries_first_k_without_primary_and_only_with_a_primary(candidates):
    rows = V.build_variant_rows(candidates)
    row = rows_by(rows, "summary_success_k2", "a_r1")
    # primary = a_r0; pool of other successes = a_r2 (fallback text), a_r3 (tagged)
    assert row["evidence_ids"] == ["a_r2::summary", "a_r3::summary"]
    text = row["assembled_context_text"]
    assert "\nSummary of another successful solution:\n\n42.\n\n" in text
    assert "\nSummary of another successful solution:\n\ncolumn addition\n\n" in text
    assert not row["sections_used"]["solution"]
    mixed = rows_by(rows, "solution+feedback+summary_all_k2", "a_r0")
    # pool = all but self (a_r0) and primary (a_r2): a_r1 (failure), a_r3
    assert mixed["evidence_ids"][:1] == ["a_r2::response_full"]
    assert [e for e in mixed["evidence_ids"] if e.endswith("::summary")] == ["a_r1::summary", "a_r3::summary"]
    assert "\nSummary of another unsuccessful solution:\n\n41\n\n" in mixed["assembled_context_text"]
    assert not rows_by(rows, "summary_success_k2", "c_r0")["sections_used"]["summary"]  # no primary in c


def test_random_summary_control_uses_other_prompts(candidates):
    rows = V.build_variant_rows(candidates)
    for row in rows:
        if row["condition"] == "random_summary_control" and row["sections_used"]["summary"]:
            assert all(s["source_prompt_id"] != row["prompt_id"] for s in row["summary_sources"])
            assert len(row["summary_sources"]) <= 2
    row = rows_by(rows, "random_summary_control", "a_r1")
    assert [s["source_response_id"] for s in row["summary_sources"]] == ["b_r0"]  # the only other success
    assert "b-summary" in row["assembled_context_text"]


def test_random_peer_fills_2s1f_slots_with_seeded_shuffle_and_slot_labels(candidates):
    rows = V.build_variant_rows(candidates)
    row = rows_by(rows, "random_peer", "a_r1")
    assert len(row["evidence_ids"]) == 3  # 2 success slots + 1 failure slot, as 2S1F for a_r1
    peers = [e.split("::")[0] for e in row["evidence_ids"]]
    order = ["a_r0", "a_r2", "a_r3", "a_r4"]
    expected = list(order)
    V.seeded_rng("a", "a_r1").shuffle(expected)
    assert peers == expected[:3]
    text = row["assembled_context_text"]
    first, second, third = (next(c for c in candidates if c["response_id"] == p)["response_text"] for p in peers)
    assert f"\nCorrect solution:\n\n{first}" in text
    assert f"\nAnother successful solution:\n\n{second}" in text
    assert f"\nA known failed solution (avoid repeating this mistake):\n\n{third}" in text
    # b_r1 (a failure of b): one success slot, no failure slot -> one peer labelled success
    assert rows_by(rows, "random_peer", "b_r1")["evidence_ids"] == ["b_r0::response_full"]


def test_verifier_score_ordered_top_n_by_reward_true_labels():
    group = [
        cand("p", 0, "s0", 1.0),
        cand("p", 1, "f1", 0.5),
        cand("p", 2, "s2", 1.0),
        cand("p", 3, "f3", 0.0),
        cand("p", 4, "s4", 1.0),
    ]
    rows = V.build_variant_rows(group)
    row = rows_by(rows, "verifier_score_ordered", "p_r3")  # 2S1F budget: 2 successes + 1 failure = 3
    assert row["evidence_ids"] == ["p_r0::response_full", "p_r2::response_full", "p_r4::response_full"]
    assert "A known failed solution" not in row["assembled_context_text"]
    row = rows_by(rows, "verifier_score_ordered", "p_r0")  # top 3 of the others: s2, s4, then f1 (0.5)
    assert row["evidence_ids"] == ["p_r2::response_full", "p_r4::response_full", "p_r1::response_full"]
    assert "\nA known failed solution (avoid repeating this mistake):\n\nf1" in row["assembled_context_text"]


def test_variant_config_templates_and_subset(tmp_path, candidates):
    config = tmp_path / "variants.json"
    config.write_text(
        json.dumps(
            {
                "variants": ["base", {"name": "just_failure", "include_failure_solution": True}],
                "teacher_config": {"failure_solution_template": "\nBAD:\n{failed_attempt}"},
            }
        )
    )
    rows = V.build_variant_rows(candidates, V.load_variant_config(config))
    assert {r["condition"] for r in rows} == {"base", "just_failure"}
    row = rows_by(rows, "just_failure", "a_r0")
    assert "\nBAD:\n41" in row["assembled_context_text"] and row["required_sections"] == ["failure_solution"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"variants": [{"name": "x", "include_solutoin": True}]}))
    with pytest.raises(ValueError, match="include_solutoin"):
        V.load_variant_config(bad)
    bad.write_text(json.dumps({"variants": ["base"], "teacher_config": {"solution_template": "no slot"}}))
    with pytest.raises(Exception, match="solution_template"):
        V.build_variant_rows(candidates, V.load_variant_config(bad))


def test_variant_config_takes_the_release_analysis_names_too(tmp_path, candidates):
    """include_solution (the release analysis' name) means include_primary_solution (the training config's);
    both given differently is an error."""
    config = tmp_path / "variants.json"
    config.write_text(
        json.dumps(
            {
                "variants": [
                    {"name": "sol", "include_primary_solution": True},
                    {"name": "plain", "include_solution": True},
                ]
            }
        )
    )
    rows = V.build_variant_rows(candidates, V.load_variant_config(config))
    a, b = rows_by(rows, "sol", "a_r0"), rows_by(rows, "plain", "a_r0")
    assert a["assembled_context_text"] == b["assembled_context_text"] and a["required_sections"] == ["solution"]
    config.write_text(
        json.dumps({"variants": [{"name": "x", "include_primary_solution": True, "include_solution": False}]})
    )
    with pytest.raises(ValueError, match="include_solution and include_primary_solution"):
        V.load_variant_config(config)


def test_cli(tmp_path, candidates):
    cpath, epath, out = tmp_path / "c.jsonl", tmp_path / "e.jsonl", tmp_path / "v.jsonl"
    cpath.write_text("".join(json.dumps(c) + "\n" for c in candidates))
    from mopd.analysis.dataset import evidence_rows

    epath.write_text("".join(json.dumps(e) + "\n" for e in evidence_rows(candidates)))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "build_context_variants.py"),
            "--candidates",
            str(cpath),
            "--evidence",
            str(epath),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == len(V.CONDITION_NAMES) * len(candidates)
    epath.write_text("")  # evidence from another run: referenced ids are missing
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "build_context_variants.py"),
            "--candidates",
            str(cpath),
            "--evidence",
            str(epath),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "evidence" in result.stderr
