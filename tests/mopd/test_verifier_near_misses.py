"""Near-miss answers: wrong answers that share digits, letters or calls with the right one score exactly 0.

Each verifier's right answer is asserted to score 1 next to its near misses, so a comparison loosened to
a prefix / substring / "contains" / numeric-closeness match (or one that reads the wrong \\boxed or
<answer>) fails here. Only truly different values are listed: equal values a verifier may legitimately
accept (128.0, 2^7, \\frac{128}{1}, "+85") are not near misses.
"""

import json

import pytest

from mopd.rewards import compute_score

# ---------------------------------------------------------------------------------------------------
# math: the last \boxed{} (math, math500, ...), and aime*/hmmt* with the whole-response math_verify fallback

MATH_SOURCES = ["math", "aime24", "hmmt25"]

MATH_NEAR_MISSES = [
    ("128", "\\boxed{12}"),  # prefix of the number
    ("128", "\\boxed{28}"),  # suffix of the number
    ("128", "\\boxed{1280}"),  # extension by a digit
    ("128", "\\boxed{128.5}"),  # extension by a fraction part
    ("128", "\\boxed{12.8}"),  # same digits, other magnitude
    ("128", "\\boxed{1.28e3}"),  # leading digits match, value 1280
    ("128", "\\boxed{1,280}"),  # thousands separator: 1280, not 128
    ("128", "\\boxed{-128}"),  # sign
    ("-7", "\\boxed{7}"),  # sign dropped
    ("-7", "\\boxed{-71}"),  # negative extension
    ("-7", "\\boxed{\\pm 7}"),  # both signs is not the answer
    ("128", "\\boxed{127}"),  # off by one
    ("128", "\\boxed{128^2}"),  # the number inside a larger expression
    ("128", "\\boxed{\\sqrt{128}}"),
    ("128", "\\boxed{128\\%}"),  # percent: 1.28, not 128
    ("128", "\\boxed{128x}"),  # a trailing variable is not a unit
    ("128", "\\boxed{128 or 12}"),  # a hedge naming the right number
    ("128", "\\boxed{128, 12}"),  # a tuple holding the right number
    ("128\\text{ m}", "\\boxed{12\\text{ m}}"),  # same unit, prefix number
    ("128", "\\boxed{128} so the answer is \\boxed{12}"),  # the LAST box is the answer
    ("128", "\\boxed{128} wait, \\boxed{1280}"),
    ("128", "128 is tempting, but \\boxed{12}"),  # right number in the text, wrong box
    ("128", "First I got 128, but the final answer is 12."),  # no box: the fallback must not find 128
    ("\\frac{1}{3}", "\\boxed{\\frac{1}{30}}"),  # wrong fraction, digit extension
    ("\\frac{1}{3}", "\\boxed{\\frac{10}{3}}"),
    ("\\frac{1}{3}", "\\boxed{\\frac{3}{1}}"),  # inverted
    ("\\frac{1}{3}", "\\boxed{0.33}"),  # rounded decimal is another value
    ("\\frac{1}{3}", "\\boxed{-\\frac{1}{3}}"),
    ("\\frac{1}{3}", "\\boxed{\\frac{1}{3}} or rather \\boxed{\\frac{1}{30}}"),
    ("2\\sqrt{3}", "\\boxed{2\\sqrt{30}}"),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{3}}"),  # coefficient dropped
    ("2\\sqrt{3}", "\\boxed{3\\sqrt{2}}"),  # same symbols, swapped
    ("(1,2)", "\\boxed{(1,20)}"),
    ("(1,2)", "\\boxed{(2,1)}"),  # ordered pair reversed
    ("(1,2)", "\\boxed{(1,2]}"),  # open vs half-open interval
    ("(1,2)", "\\boxed{(1,2,3)}"),  # extension of the tuple
    ("x^2+1", "\\boxed{x^2}"),  # prefix of the expression
    ("x^2+1", "\\boxed{x^2+10}"),
    ("x^2+1", "\\boxed{x^2-1}"),
]
MATH_RIGHT = [
    ("128", "\\boxed{128}"),
    ("128", "\\boxed{12} no: \\boxed{128}"),
    ("-7", "\\boxed{-7}"),
    ("\\frac{1}{3}", "\\boxed{\\frac13}"),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"),
    ("(1,2)", "\\boxed{(1,2)}"),
    ("x^2+1", "\\boxed{1+x^2}"),
    ("128\\text{ m}", "\\boxed{128\\text{ m}}"),
]


@pytest.mark.parametrize("source", MATH_SOURCES)
@pytest.mark.parametrize("gt, response", MATH_RIGHT)
def test_math_right_answer_scores_1(source, gt, response):
    assert compute_score(source, response, gt)["score"] == 1.0


@pytest.mark.parametrize("source", MATH_SOURCES)
@pytest.mark.parametrize("gt, response", MATH_NEAR_MISSES)
def test_math_near_miss_scores_0(source, gt, response):
    assert compute_score(source, response, gt)["score"] == 0.0


@pytest.mark.xfail(
    strict=True,
    reason="known gap: math_verify strips units on both sides, so 128 cm == 128 m; "
    "a unit-aware comparison is needed (answers that omit the unit must keep scoring 1)",
)
@pytest.mark.parametrize("source", ["math", "aime24"])
def test_math_other_unit_scores_0(source):
    assert compute_score(source, "\\boxed{128\\text{ cm}}", "128\\text{ m}")["score"] == 0.0


# ---------------------------------------------------------------------------------------------------
# SciKnowEval: exactly one letter inside the LAST <answer>...</answer>


def _tags(block: str) -> str:
    return f"<reasoning>\nOption B fits the data.\n</reasoning>\n<answer>\n{block}\n</answer>"


MCQ_NEAR_MISSES = [
    _tags("C"),  # a different letter
    _tags("A, B"),  # two letters, the right one last
    _tags("B, C"),  # two letters, the right one first
    _tags("B or C"),
    _tags("BC"),  # letters run together
    _tags("Option B"),  # extra text around the letter is a format error, not a match
    _tags("B) because it fits"),
    "The answer is B.",  # right letter, but outside any <answer> tags
    "<answer>\nC\n</answer> B",  # right letter after the closed block
    "B <answer>C</answer>",
    "<answer>B</answer> on reflection <answer>C</answer>",  # right in an earlier block, wrong in the last
    "<answer>B",  # never closed (truncated)
]


def test_mcq_right_answer_scores_1():
    assert compute_score("sciknoweval", _tags("B"), "B")["score"] == 1.0
    assert compute_score("sciknoweval", "<answer>C</answer> no: <answer>B</answer>", "B")["score"] == 1.0


@pytest.mark.parametrize("response", MCQ_NEAR_MISSES)
def test_mcq_near_miss_scores_0(response):
    assert compute_score("sciknoweval", response, "B")["score"] == 0.0


# ---------------------------------------------------------------------------------------------------
# GPQA (\boxed{X}) and MMLU-Pro ("the answer is (X)"): the last explicit answer, else the last capital

CHOICE_NEAR_MISSES = [
    ("gpqa", "\\boxed{C}"),
    ("gpqa", "\\boxed{B} no wait, \\boxed{C}"),  # the last box is the answer
    ("gpqa", "I choose B. Answer: C"),  # an explicit answer beats an earlier bare letter
    ("gpqa", "\\boxed{A, B}"),  # two options named: no choice (was read as B)
    ("gpqa", "\\boxed{C or B}"),
    ("gpqa", "Answer: A, B"),
    ("gpqa", "\\boxed{BC}"),
    ("gpqa", "\\boxed{b}"),  # capitals only: "b" is not option B
    ("gpqa", "The answer is Bob"),  # a word starting with the letter
    ("gpqa", "\\boxed{E}"),  # out of range for A-D
    ("mmlu_pro", "the answer is (C)"),
    ("mmlu_pro", "the answer is (B) ... so the answer is (C)"),
    ("mmlu_pro", "the answer is (A) or (B)"),  # hedge
    ("mmlu_pro", "the answer is (BC)"),
]


@pytest.mark.parametrize(
    "source, response",
    [
        ("gpqa", "\\boxed{B}"),
        ("gpqa", "\\boxed{\\text{(B)}}"),
        ("gpqa", "\\boxed{A, B}? No: \\boxed{B}"),
        ("mmlu_pro", "the answer is (B)"),
    ],
)
def test_choice_right_answer_scores_1(source, response):
    assert compute_score(source, response, "B")["score"] == 1.0


@pytest.mark.parametrize("source, response", CHOICE_NEAR_MISSES)
def test_choice_near_miss_scores_0(source, response):
    assert compute_score(source, response, "B")["score"] == 0.0


# ---------------------------------------------------------------------------------------------------
# ToolUse: the multiset of actions and the merged inputs must both equal the ground truth's

TOOL_GT = json.dumps(
    [
        {"Action": "getUserProfile", "Action_Input": json.dumps({"userId": "u-1", "limit": 10})},
        {"Action": "assignUserRole", "Action_Input": json.dumps({"roleId": "role-9"})},
    ]
)
PROFILE = ("getUserProfile", {"userId": "u-1", "limit": 10})
ROLE = ("assignUserRole", {"roleId": "role-9"})


def _react(*calls) -> str:
    lines = ["Thought: I need the tools."]
    for name, args in calls:
        lines += [f"Action: {name}", f"Action Input: {json.dumps(args)}", "Observation: ok"]
    return "\n".join(lines)


TOOL_NEAR_MISSES = {
    "argument extended": _react(("getUserProfile", {"userId": "u-12", "limit": 10}), ROLE),
    "argument prefix": _react(("getUserProfile", {"userId": "u-", "limit": 10}), ROLE),
    "number off": _react(("getUserProfile", {"userId": "u-1", "limit": 1}), ROLE),
    "number as string": _react(("getUserProfile", {"userId": "u-1", "limit": "10"}), ROLE),
    "extra key": _react(("getUserProfile", {**PROFILE[1], "verbose": True}), ROLE),
    "missing key": _react(("getUserProfile", {"userId": "u-1"}), ROLE),
    "extra action": _react(PROFILE, ROLE, ("deleteUser", {})),
    "action repeated": _react(PROFILE, ROLE, ROLE),
    "missing action": _react(PROFILE),
    "missing action, its input kept": _react(("getUserProfile", {**PROFILE[1], **ROLE[1]})),
    "name prefix": _react(("getUser", PROFILE[1]), ROLE),
    "name extended": _react(("getUserProfiles", PROFILE[1]), ROLE),
    "name case": _react(("getuserprofile", PROFILE[1]), ROLE),
    "calls in prose": 'I would call getUserProfile with {"userId": "u-1", "limit": 10}, then assignUserRole.',
}


def test_tooluse_right_answer_scores_1():
    assert compute_score("tooluse", _react(ROLE, PROFILE), TOOL_GT)["score"] == 1.0


@pytest.mark.parametrize("response", list(TOOL_NEAR_MISSES.values()), ids=list(TOOL_NEAR_MISSES))
def test_tooluse_near_miss_scores_0(response):
    assert compute_score("tooluse", response, TOOL_GT)["score"] == 0.0


# ---------------------------------------------------------------------------------------------------
# code: stdin (token compare, numbers numerically) and functional (JSON values)


def _fence(body: str) -> str:
    return f"```python\n{body}\n```"


STDIN_GT = json.dumps(
    {"inputs": ["64 64\n", "1 2\n"], "outputs": ["128\n", "3\n"], "testtype": "stdin", "time_limit": 4}
)
READ = "a, b = map(int, input().split())\n"
STDIN_NEAR_MISSES = {
    "off by one": "print(a + b + 1)",
    "extra digit": "print(str(a + b) + '0')",  # 1280 / 30
    "extra char": "print(str(a + b) + '!')",
    "prefix": "print(str(a + b)[:-1])",  # 12 / ""
    "sign": "print(-(a + b))",
    "fraction part": "print(str(a + b) + '.5')",
    "extra token": "print(a + b, 0)",
    "extra line": "print(a + b)\nprint('done')",
    "digit separator": "print('1_28' if a + b == 128 else a + b)",  # Decimal('1_28') == 128: not a printed 128
}
FUNC_GT = {
    "inputs": ["[1,2,3]", "[5]"],
    "outputs": ["[2, 3, 4]", "[6]"],
    "testtype": "functional",
    "fn_name": "inc",
    "time_limit": 4,
}
FUNC_NEAR_MISSES = {
    "off by one": "return [x + 2 for x in xs]",
    "prefix of the list": "return [x + 1 for x in xs][:-1]",
    "extra element": "return [x + 1 for x in xs] + [0]",
    "reversed": "return [x + 1 for x in xs][::-1]",
    "as a string": "return str([x + 1 for x in xs])",
    "nested": "return [[x + 1 for x in xs]]",
    "beyond tolerance": "return [x + 1.001 for x in xs]",
    "bools for ints": "return [x + 1 == x + 1 for x in xs]",
}
STR_GT = {
    "inputs": ['"ab"', '"x"'],
    "outputs": ['"ab!"', '"x!"'],
    "testtype": "functional",
    "fn_name": "bang",
    "time_limit": 4,
}
STR_NEAR_MISSES = {
    "extra char": "return s + '!!'",
    "prefix": "return s",
    "trailing space": "return s + '! '",
    "case": "return s.upper() + '!'",
}  # string results compare exactly


def test_code_right_answers_score_1():
    assert compute_score("code", _fence(READ + "print(a + b)"), STDIN_GT)["score"] == 1.0
    assert compute_score("code", _fence("def inc(xs):\n    return [x + 1 for x in xs]"), FUNC_GT)["score"] == 1.0
    assert compute_score("code", _fence("def bang(s):\n    return s + '!'"), STR_GT)["score"] == 1.0


@pytest.mark.parametrize("body", list(STDIN_NEAR_MISSES.values()), ids=list(STDIN_NEAR_MISSES))
def test_code_stdin_near_miss_scores_0(body):
    assert compute_score("code", _fence(READ + body), STDIN_GT)["score"] == 0.0


@pytest.mark.parametrize(
    "gt, fn, body",
    [(FUNC_GT, "inc(xs)", b) for b in FUNC_NEAR_MISSES.values()]
    + [(STR_GT, "bang(s)", b) for b in STR_NEAR_MISSES.values()],
    ids=[f"list-{k}" for k in FUNC_NEAR_MISSES] + [f"str-{k}" for k in STR_NEAR_MISSES],
)
def test_code_functional_near_miss_scores_0(gt, fn, body):
    assert compute_score("code", _fence(f"def {fn}:\n    {body}"), gt)["score"] == 0.0


# ---------------------------------------------------------------------------------------------------
# the embedded arithmetic task: the whole response must be one integer equal to the answer


@pytest.mark.parametrize(
    "response",
    ["8", "5", "850", "-85", "58", "84", "86", "85.5", "85 86", "85\n85", "The answer is 85", "85<|im_end|>86"],
)
def test_embedded_near_miss_scores_0(response):
    assert compute_score("embedded_arith", "85", "85")["score"] == 1.0
    assert compute_score("embedded_arith", response, "85")["score"] == 0.0
