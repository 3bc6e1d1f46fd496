"""Text verifiers: math (boxed + math_verify), SciKnowEval/GPQA/MMLU-Pro letters, ToolUse, reasoning-gym."""

import json
import signal

import pytest

from mopd import rewards
from mopd.rewards import compute_score, mcq, registry, tooluse
from mopd.rewards import math as math_verifier

# ---------------------------------------------------------------------------------------------------
# math


@pytest.mark.parametrize(
    "response, gt",
    [
        ("The answer is \\boxed{42}.", "42"),
        ("so \\boxed{\\frac{1}{2}}", "0.5"),  # math_verify equivalence
        ("so \\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"),  # normalisation alone
        ("\\boxed{\\tfrac{3}{4}}", "\\frac34"),
        ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)"),
        ("\\boxed{$7$}", "7"),
        ("\\boxed{\\text{Yes}}", "Yes"),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2"),
        ("\\boxed{\\{1, 2\\}}", "\\{2,1\\}"),
        (
            "first \\boxed{3}, then corrected: \\boxed{\\frac{a+b}{\\sqrt{c}}}",
            "\\frac{a+b}{\\sqrt{c}}",
        ),  # nested braces, last box
    ],
)
def test_math_correct(response, gt):
    result = compute_score("math", response, gt)
    assert result["score"] == 1.0 and result["acc"] == 1.0
    assert result["incorrect_format"] == 0 and result["feedback"] == ""


def test_math_wrong_and_uses_last_box():
    result = compute_score("math500", "\\boxed{42} no wait \\boxed{41}", "42")
    assert result["score"] == 0.0 and result["pred"] == "41"
    assert result["incorrect_format"] == 0 and result["feedback"] == ""  # no correctness feedback: no answer leak


def test_math_nested_braces_extraction():
    text = "x \\boxed{\\frac{1}{\\sqrt{2}}} y"
    assert math_verifier.last_boxed_only_string(text) == "\\boxed{\\frac{1}{\\sqrt{2}}}"
    assert math_verifier.extract_boxed_answer(text) == "\\frac{1}{\\sqrt{2}}"
    assert math_verifier.extract_boxed_answer("\\boxed{\\frac{1}{2}") is None  # never closed (truncated)


def test_math_no_box_is_format_error_with_feedback():
    result = compute_score("gsm8k", "The answer is 42.", "42")
    assert result["score"] == 0.0 and result["incorrect_format"] == 1
    assert "\\boxed" in result["feedback"] and "42" not in result["feedback"]


def test_math_truncation_feedback():
    result = compute_score("math", "Let me think \\boxed{\\frac{1}{", "0.5", {"truncated": True})
    assert result["score"] == 0.0 and result["incorrect_format"] == 1
    assert result["truncated"] == 1 and result["truncated_and_missing_answer"] == 1
    assert "truncated" in result["feedback"]


def test_math_normalisation():
    n = math_verifier.normalize_answer_string
    assert n(" \\dfrac{1}{2} ") == n("\\frac{1}{2}") == "\\frac{1}{2}"
    assert n("\\left[0, 1\\right)") == "[0,1)"
    assert n("$x = 3$") == "x=3"
    assert n("\\text{ (B) }") == "(B)"


def test_competition_sources_and_prefix_fallback():
    for source in ("aime24", "aime25", "aime2024", "aime2025", "amc23", "hmmt25", "AIME_2026", "hmmt25_feb"):
        assert compute_score(source, "\\boxed{204}", "204")["score"] == 1.0, source
        assert compute_score(source, "\\boxed{205}", "204")["score"] == 0.0, source
    # the aime*/hmmt* fallback: math_verify reads the answer from the whole response
    assert compute_score("aime25", "So the final answer is $204$.", "204")["score"] == 1.0
    assert compute_score("math", "So the final answer is $204$.", "204")["score"] == 0.0
    with pytest.raises(ValueError, match="no reward function"):
        compute_score("not_a_source", "x", "y")


def test_math_time_limit_keeps_outer_timer():
    """math_verify runs under its own SIGALRM limit; an outer itimer (RewardScorer's) keeps running."""
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert math_verifier.is_equivalent("0.5", "\\frac{1}{2}")
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20.0 < remaining <= 30.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not fired


def test_math_time_limit_expires():
    import time

    with pytest.raises(math_verifier._MathVerifyTimeout):
        with math_verifier._time_limit(0.2):
            time.sleep(2)


# ---------------------------------------------------------------------------------------------------
# SciKnowEval MCQ


def _mcq(letter_block: str) -> str:
    return f"<reasoning>\nOption B matches the data.\n</reasoning>\n<answer>\n{letter_block}\n</answer>"


def test_mcq_right_and_wrong():
    right = compute_score("sciknoweval", _mcq("B"), "B")
    assert right == {**right, "score": 1.0, "acc": 1.0, "pred": "B", "incorrect_format": 0, "feedback": ""}
    wrong = compute_score("sciknoweval", _mcq("C"), "B")
    assert wrong["score"] == 0.0 and wrong["pred"] == "C"
    assert wrong["incorrect_format"] == 0 and wrong["feedback"] == ""  # well formed: flag 0 (the release had 1)


@pytest.mark.parametrize("block", ["b", "(B)", " B. ", "B)"])
def test_mcq_lenient_letter_forms(block):
    assert compute_score("sciknoweval", _mcq(block), "B")["score"] == 1.0


def test_mcq_last_answer_block_counts():
    text = "<answer>A</answer> ... on reflection <answer>\nB\n</answer>"
    assert compute_score("sciknoweval", text, "B")["score"] == 1.0
    assert compute_score("sciknoweval", text, "A")["score"] == 0.0


@pytest.mark.parametrize(
    "response",
    [
        "The answer is B.",  # no tags
        "<answer>\nB\n",  # never closed (truncated)
        "<answer>A</answer> then <answer>\nB",  # the last block is not closed
        "<answer>B: 1.69</answer>",  # answer text restated
        "<answer></answer>",
        "<answer>A or B</answer>",
    ],
)
def test_mcq_format_errors(response):
    result = compute_score("sciknoweval", response, "B")
    assert result["score"] == 0.0
    assert result["incorrect_format"] == 1
    assert "<answer>" in result["feedback"]


def test_mcq_extract_helper():
    assert mcq.extract_xml_answer("x <ANSWER> C </ANSWER>") == "C"
    assert mcq.extract_xml_answer("no tags") is None


def test_gpqa_and_mmlu_pro_letters():
    assert compute_score("gpqa", "Reasoning... a key step ... \\boxed{C}", "C")["score"] == 1.0
    assert compute_score("gpqa", "I pick A, no wait, D", "D")["score"] == 1.0
    # lower-case English "a" is not answer A (the release upper-cased the text first)
    result = compute_score("gpqa", "It is a tricky one: the answer is \\boxed{B}. That is a fact.", "B")
    assert result["score"] == 1.0 and result["pred"] == "B"
    assert compute_score("gpqa", "no letter here", "A")["incorrect_format"] == 1
    assert compute_score("mmlu_pro", "... the answer is (J)", "J")["score"] == 1.0
    assert compute_score("mmlu_pro", "... the answer is (I). Also see A.", "I")["score"] == 1.0
    assert compute_score("mmlu_pro", "... the answer is (F)", "G")["score"] == 0.0


# ---------------------------------------------------------------------------------------------------
# ToolUse

GT = json.dumps(
    [
        {"Action": "getUserProfile", "Action_Input": json.dumps({"userId": "u-1", "accessToken": "tok"})},
        {"Action": "assignUserRole", "Action_Input": json.dumps({"roleId": "role-9"})},
    ]
)


def _react(*calls):
    out = ["Thought: I need the tools."]
    for name, args in calls:
        out += [f"Action: {name}", f"Action Input: {json.dumps(args)}", "Observation: ..."]
    return "\n".join(out)


def test_tooluse_right_any_order():
    response = _react(
        ("assignUserRole", {"roleId": "role-9"}), ("getUserProfile", {"accessToken": "tok", "userId": "u-1"})
    )
    result = compute_score("tooluse", response, GT)
    assert result["score"] == 1.0 and result["acc"] == 1.0 and result["feedback"] == ""
    assert result["incorrect_format"] == 0 and result["actions_correct"] == 1 and result["inputs_correct"] == 1


def test_tooluse_nested_json_input():
    gt = json.dumps([{"Action": "update", "Action_Input": json.dumps({"id": 1, "data": {"a": [1, {"b": 2}]}})}])
    assert compute_score("tooluse", _react(("update", {"id": 1, "data": {"a": [1, {"b": 2}]}})), gt)["score"] == 1.0


def _no_gt_values(feedback: str):
    for secret in ("u-1", "tok", "role-9"):
        assert secret not in feedback


def test_tooluse_wrong_action_no_leak():
    response = _react(("getUserProfile", {"userId": "u-1", "accessToken": "tok"}), ("deleteRole", {"roleId": "role-9"}))
    result = compute_score("tooluse", response, GT)
    assert result["score"] == 0.0 and result["actions_correct"] == 0
    assert "action deleteRole not expected" in result["feedback"]
    assert "an expected action was not called" in result["feedback"]
    assert "assignUserRole" not in result["feedback"]  # the missing action's name is not revealed
    _no_gt_values(result["feedback"])


def test_tooluse_wrong_count_no_leak():
    response = _react(("getUserProfile", {"userId": "u-1", "accessToken": "tok"}))
    result = compute_score("tooluse", response, GT)
    assert result["score"] == 0.0 and "wrong number of actions" in result["feedback"]
    _no_gt_values(result["feedback"])


def test_tooluse_wrong_input_no_leak():
    response = _react(
        ("getUserProfile", {"userId": "u-2", "accessToken": "tok", "verbose": True}), ("assignUserRole", {})
    )
    result = compute_score("tooluse", response, GT)
    assert result["score"] == 0.0 and result["actions_correct"] == 1 and result["inputs_correct"] == 0
    fb = result["feedback"]
    assert "inputs of action getUserProfile differ in key userId" in fb
    assert "inputs of action getUserProfile have unexpected key verbose" in fb
    assert "inputs of action assignUserRole are missing key roleId" in fb
    _no_gt_values(fb)


def test_tooluse_leak_flag_restores_release_feedback(monkeypatch):
    response = _react(("getUserProfile", {"userId": "u-2", "accessToken": "tok"}))
    leaked = compute_score("tooluse", response, GT, {"leak_ground_truth": True})
    assert leaked["score"] == 0.0
    assert "expected ['getUserProfile', 'assignUserRole']" in leaked["feedback"]
    assert "role-9" in leaked["feedback"] and "u-1" in leaked["feedback"]
    monkeypatch.setattr(tooluse, "LEAK_GROUND_TRUTH", True)
    assert "role-9" in compute_score("tooluse", response, GT)["feedback"]
    assert "role-9" not in compute_score("tooluse", response, GT, {"leak_ground_truth": False})["feedback"]


def test_tooluse_format_errors():
    result = compute_score("tooluse", "I would call the profile tool.", GT)
    assert result["score"] == 0.0 and result["incorrect_format"] == 1 and "Action:" in result["feedback"]
    bad_json = "Action: getUserProfile\nAction Input: {userId: u-1}"
    result = compute_score("tooluse", bad_json, GT)
    assert result["incorrect_format"] == 1 and "not a valid JSON object" in result["feedback"]


def test_tooluse_action_line_does_not_swallow_next_line():
    # "Action:" followed by a blank and then "Action Input:" must not read "Action" as the tool name
    result = compute_score(
        "tooluse", "Action:\nAction Input: {}", json.dumps([{"Action": "Action", "Action_Input": "{}"}])
    )
    assert result["score"] == 0.0


def test_tooluse_optional_action():
    gt = json.dumps(
        [
            {"Action": "getUserProfile", "Action_Input": json.dumps({"userId": "u-1"})},
            {"Action": "[Optional]updateUserProfile", "Action_Input": json.dumps({"userId": "u-1", "bio": "hi"})},
        ]
    )
    with_opt = _react(("getUserProfile", {"userId": "u-1"}), ("updateUserProfile", {"userId": "u-1", "bio": "hi"}))
    without = _react(("getUserProfile", {"userId": "u-1"}))
    assert compute_score("tooluse", with_opt, gt)["score"] == 1.0
    assert compute_score("tooluse", without, gt)["score"] == 1.0
    wrong_opt = _react(("getUserProfile", {"userId": "u-1"}), ("updateUserProfile", {"userId": "u-1", "bio": "no"}))
    assert compute_score("tooluse", wrong_opt, gt)["score"] == 0.0


# ---------------------------------------------------------------------------------------------------
# reasoning-gym and registry plumbing


def test_reasoning_gym_scorer():
    pytest.importorskip("reasoning_gym")
    from mopd.dataprep import load_reasoning_gym

    rec = load_reasoning_gym("basic_arithmetic", 3, seed=5)[0]
    gt, extra = rec["answer"], rec["extra_info"]
    assert compute_score("reasoning_gym", f"thinking...\n<answer>{gt}</answer>", gt, extra)["score"] == 1.0
    wrong = compute_score("reasoning_gym", f"<answer>{int(gt) + 1}</answer>", gt, extra)
    assert wrong["score"] < 1.0 and wrong["acc"] == 0.0
    missing = compute_score("reasoning_gym", gt, gt, extra)
    assert missing["score"] == 0.0 and missing["incorrect_format"] == 1


def test_builtins_survive_pickling_to_workers():
    """The scorer pool sends the registry to spawn workers: the text verifiers must pickle by reference."""
    import pickle

    for source in ("math", "aime24", "sciknoweval", "gpqa", "mmlu_pro", "tooluse", "reasoning_gym", "humaneval"):
        fn = registry._REGISTRY[source]
        assert pickle.loads(pickle.dumps(fn)) is fn


def test_stdlib_math_not_shadowed_in_package():
    # importing the submodule mopd.rewards.math must not break the package's own arithmetic
    with rewards.RewardScorer(num_workers=1) as scorer:  # the pool path does arithmetic in the package
        out = scorer.score([("math", "\\boxed{1}", "1", None), ("sciknoweval", _mcq("A"), "A", None)])
    assert [r["score"] for r in out] == [1.0, 1.0]
