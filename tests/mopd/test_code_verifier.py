"""mopd.rewards.code: extraction, the three test types, scoring, feedback texts, batching, dispatch."""

from __future__ import annotations

import json
import time

import pytest

from mopd import rewards
from mopd.rewards import code as cv


def fence(src: str, lang: str = "python") -> str:
    return f"Let me think.\n```{lang}\n{src}\n```\nDone."


def stdin_gt(inputs, outputs, time_limit=2.0):
    return json.dumps({"inputs": inputs, "outputs": outputs, "testtype": "stdin", "time_limit": time_limit})


def functional_gt(inputs, outputs, fn_name, time_limit=2.0):
    return {
        "inputs": inputs,
        "outputs": outputs,
        "testtype": "functional",
        "fn_name": fn_name,
        "time_limit": time_limit,
    }


def code_gt(scripts, fn_name="", time_limit=2.0, context=None):
    gt = {
        "inputs": scripts,
        "outputs": [""] * len(scripts),
        "testtype": "code",
        "fn_name": fn_name,
        "time_limit": time_limit,
    }
    if context is not None:
        gt["context"] = context
    return json.dumps(gt)


KEYS = {
    "score",
    "acc",
    "pred",
    "incorrect_format",
    "error_in_test_cases",
    "timed_out",
    "truncated",
    "truncated_and_missing_answer",
    "feedback",
    "num_tests",
    "num_passed",
}

# --- extraction -----------------------------------------------------------------------------------------


def test_extract_longest_python_block():
    text = (
        "```python\nx = 1\n```\ntext\n```py\nx = 2\ny = 3\n```\n```\nshort\n```\n"
        "```cpp\nint main() { return 0; } // long\n```"
    )
    assert cv.extract_code(text) == "x = 2\ny = 3\n"
    assert cv.extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert cv.extract_code("no code here") is None
    assert cv.extract_code("```python\nunclosed") is None
    assert cv.extract_code("```cpp\nint x;\n```") is None


def test_no_code_block_is_incorrect_format():
    gt = stdin_gt(["1"], ["1"])
    result = cv.compute_score("print(1)", gt)
    assert set(result) == KEYS
    assert result["score"] == 0.0 and result["incorrect_format"] == 1 and result["pred"] == ""
    assert result["feedback"] == "Put your code inside a ```python ... ``` block."
    truncated = cv.compute_score("```python\nprint(1", gt, {"truncated": True})
    assert truncated["truncated"] == 1 and truncated["truncated_and_missing_answer"] == 1
    assert "cut off" in truncated["feedback"] and cv.FORMAT_FEEDBACK in truncated["feedback"]


def test_truncated_flag_is_reported_with_code():
    result = cv.compute_score(fence("print(1)"), stdin_gt(["x"], ["1"]), {"truncated": True})
    assert result["score"] == 1.0 and result["truncated"] == 1 and result["truncated_and_missing_answer"] == 0


def test_bad_ground_truth_is_a_clear_error():
    with pytest.raises(ValueError, match="not valid JSON"):
        cv.compute_score(fence("print(1)"), "{nope")
    with pytest.raises(ValueError, match="inputs"):
        cv.compute_score(fence("print(1)"), {"inputs": [], "outputs": [], "testtype": "stdin"})
    with pytest.raises(ValueError, match="testtype"):
        cv.compute_score(fence("print(1)"), {"inputs": ["1"], "outputs": ["1"], "testtype": "sql"})
    with pytest.raises(ValueError, match="as long as"):
        cv.compute_score(fence("print(1)"), {"inputs": ["1"], "outputs": [], "testtype": "stdin"})


# --- stdin ----------------------------------------------------------------------------------------------

ADD = "a, b = map(int, input().split())\nprint(a + b)"


def test_stdin_right_and_whitespace_normalisation():
    gt = stdin_gt(["1 2\n", "10 20", "-5 5"], ["3", " 30\n\n", "0"])
    result = cv.compute_score(fence(ADD), gt)
    assert result["score"] == 1.0 and result["acc"] == 1.0 and result["feedback"] == ""
    assert result["num_tests"] == 3 and result["num_passed"] == 3 and result["pred"].startswith("a, b")
    # lines vs spaces and numerically equal decimals
    multi = "print(1)\nprint('2  3')\nprint(0.50)"
    assert cv.compute_score(fence(multi), stdin_gt(["x"], ["1 2\n3 0.5"]))["score"] == 1.0


def test_stdin_wrong_answers_feedback_two_shortest():
    wrong = "a, b = map(int, input().split())\nprint(a - b)"
    gt = stdin_gt(["100 1", "1 1", "7 3", "2 2"], ["101", "2", "10", "4"])
    result = cv.compute_score(fence(wrong), gt)
    assert result["score"] == 0.0 and result["acc"] == 0.0 and result["error_in_test_cases"] == 0
    fb = result["feedback"]
    assert fb.count("Wrong Answer") == 2
    assert fb.startswith("Wrong Answer\nInput:\n1 1\nOutput:\n0\nExpected:\n2")
    assert "Input:\n7 3\nOutput:\n4\nExpected:\n10" in fb  # the two shortest inputs (ties keep order)
    assert "100 1" not in fb


def test_stdin_partial_acc():
    prog = "n = int(input())\nprint(n * 2 if n < 3 else 0)"
    result = cv.compute_score(fence(prog), stdin_gt(["1", "2", "3", "4"], ["2", "4", "6", "8"]))
    assert result["score"] == 0.0 and result["acc"] == 0.5 and result["num_passed"] == 2


def test_stdin_runtime_error_feedback_trims_traceback():
    prog = (
        "def a(x):\n    return b(x)\n\ndef b(x):\n    return c(x)\n\ndef c(x):\n    return d(x)\n\n"
        "def d(x):\n    return 1 // x\n\nprint(a(int(input())))"
    )
    result = cv.compute_score(fence(prog), stdin_gt(["1", "0"], ["1", "0"]))
    assert result["score"] == 0.0 and result["acc"] == 0.5 and result["error_in_test_cases"] == 1
    fb = result["feedback"]
    assert fb.startswith("Runtime Error\nTraceback (most recent call last):")
    assert fb.count('File "solution.py"') == 3  # at most 3 frames, all of the solution
    assert "in b" in fb and "in c" in fb and "in d" in fb and "in a" not in fb
    assert "return 1 // x" in fb and "ZeroDivisionError: integer division or modulo by zero" in fb
    assert fb.endswith("Last input:\n0")
    assert "sandbox.py" not in fb and "harness" not in fb


def test_syntax_error_feedback():
    result = cv.compute_score(fence("print(1"), stdin_gt(["x"], ["1"]))
    assert result["score"] == 0.0 and result["error_in_test_cases"] == 1
    assert "SyntaxError" in result["feedback"] and 'File "solution.py", line 1' in result["feedback"]


def test_stdin_timeout_feedback():
    prog = "n = int(input())\nwhile n == 2:\n    pass\nprint(n)"
    t0 = time.monotonic()
    result = cv.compute_score(fence(prog), stdin_gt(["1", "2"], ["1", "2"], time_limit=0.5))
    assert time.monotonic() - t0 < 10
    assert result["score"] == 0.0 and result["acc"] == 0.5 and result["timed_out"] == 1
    assert result["feedback"] == "Time limit exceeded on input:\n2"


def test_runtime_error_beats_timeout_and_wrong():
    prog = "n = int(input())\nif n == 1: print(5)\nif n == 2:\n    while True: pass\nif n == 3: raise KeyError('k')"
    result = cv.compute_score(fence(prog), stdin_gt(["1", "2", "3"], ["1", "2", "3"], time_limit=0.5))
    assert result["feedback"].startswith("Runtime Error") and "KeyError: 'k'" in result["feedback"]
    assert result["timed_out"] == 1 and result["error_in_test_cases"] == 1


def test_stdin_legit_patterns_pass():
    fast_io = (
        "import sys\ndata = sys.stdin.buffer.read().split()\nout = [str(int(x) * 2) for x in data]\n"
        "sys.stdout.write('\\n'.join(out) + '\\n')"
    )
    assert cv.compute_score(fence(fast_io), stdin_gt(["1 2 3"], ["2\n4\n6"]))["score"] == 1.0
    exit_after = "print(int(input()) + 1)\nimport sys\nsys.exit(0)\nprint('never')"
    assert cv.compute_score(fence(exit_after), stdin_gt(["1"], ["2"]))["score"] == 1.0
    os_exit_after = "import os, sys\nprint(int(input()) + 1)\nsys.stdout.flush()\nos._exit(0)"
    assert cv.compute_score(fence(os_exit_after), stdin_gt(["1"], ["2"]))["score"] == 1.0
    recursion = (
        "import sys, threading\nsys.setrecursionlimit(1 << 20)\nthreading.stack_size(1 << 26)\n"
        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
        "def main():\n    print(depth(int(input())))\nthreading.Thread(target=main).start()"
    )
    assert cv.compute_score(fence(recursion), stdin_gt(["50000"], ["50000"]))["score"] == 1.0
    files = (
        "import tempfile, os\nwith open('scratch.txt', 'w') as f: f.write(input())\n"
        "with tempfile.NamedTemporaryFile('w+') as t:\n    t.write('x'); t.flush()\n"
        "print(open('scratch.txt').read())"
    )
    assert cv.compute_score(fence(files), stdin_gt(["hello"], ["hello"]))["score"] == 1.0
    main_guard = "def main():\n    print(int(input()) * 3)\nif __name__ == '__main__':\n    main()"
    assert cv.compute_score(fence(main_guard), stdin_gt(["2"], ["6"]))["score"] == 1.0


def test_numpy_available_in_the_sandbox():
    pytest.importorskip("numpy")
    prog = "import numpy as np\nprint(int(np.arange(int(input())).sum()))"
    assert cv.compute_score(fence(prog), stdin_gt(["5"], ["10"]))["score"] == 1.0


# --- functional -----------------------------------------------------------------------------------------


def test_functional_plain_function_and_feedback():
    gt = functional_gt(["[2,7,11,15]\n9", "[3,2,4]\n6", "[3,3]\n6"], ["[0, 1]", "[1, 2]", "[0, 1]"], "twoSum")
    right = (
        "def twoSum(nums, target):\n    seen = {}\n    for i, x in enumerate(nums):\n"
        "        if target - x in seen:\n            return (seen[target - x], i)\n        seen[x] = i"
    )
    result = cv.compute_score(fence(right), gt)
    assert result["score"] == 1.0 and result["feedback"] == ""  # a tuple result equals a JSON list
    wrong = "def twoSum(nums, target):\n    return [0, 1]"
    result = cv.compute_score(fence(wrong), gt)
    assert result["score"] == 0.0 and abs(result["acc"] - 2 / 3) < 1e-9
    assert result["feedback"] == "Wrong Answer\nInput:\n[3,2,4]\n6\nOutput:\n[0, 1]\nExpected:\n[1, 2]"


def test_functional_leetcode_solution_class_and_kwargs():
    prog = (
        "from typing import List\nclass Solution:\n    def __init__(self):\n        self.calls = 0\n"
        "    def maxOf(self, nums: List[int]) -> int:\n        self.calls += 1\n"
        "        return max(nums) * self.calls"
    )
    gt = functional_gt(["[1,5,2]", "[7]", {"nums": [3, 4]}], ["5", "7", "4"], "maxOf")
    assert cv.compute_score(fence(prog), gt)["score"] == 1.0  # a fresh Solution() per test


def test_functional_comparisons():
    prog = "def f(x):\n    return x"
    cases = [
        ("0.30000000000000004", "0.3", True),  # float tolerance
        ("1.0", "1", True),
        ("1.1", "1", False),
        ("true", "1", False),  # bools are strict
        ("1", "true", False),
        ('"abc"', '"abc"', True),
        ('{"a": [1, 2]}', '{"a": [1, 2]}', True),
        ('{"a": [1, 2]}', '{"a": [2, 1]}', False),
        ("null", "null", True),
        ("[1, [2, 3.0000000001]]", "[1, [2, 3]]", True),
    ]
    for given, expected, ok in cases:
        gt = functional_gt([given], [expected], "f")
        assert cv.compute_score(fence(prog), gt)["score"] == float(ok), (given, expected)
    sets = "def f(x):\n    return {3, 1, 2}"
    assert cv.compute_score(fence(sets), functional_gt(["0"], ["[1, 2, 3]"], "f"))["score"] == 1.0


def test_functional_missing_function_and_unserialisable_result():
    result = cv.compute_score(fence("def g(x):\n    return x"), functional_gt(["1"], ["1"], "f"))
    assert result["score"] == 0.0 and "does not define a function named 'f'" in result["feedback"]
    obj = "class A: pass\ndef f(x):\n    return A()"
    result = cv.compute_score(fence(obj), functional_gt(["1"], ["1"], "f"))
    assert result["score"] == 0.0 and "not JSON serializable" in result["feedback"]


def test_functional_runtime_error_feedback_has_input():
    prog = "def f(xs):\n    return xs[10]"
    result = cv.compute_score(fence(prog), functional_gt(["[1, 2, 3]"], ["3"], "f"))
    fb = result["feedback"]
    assert fb.startswith("Runtime Error\nTraceback") and "IndexError: list index out of range" in fb
    assert fb.endswith("Last input:\n[1, 2, 3]")


def test_functional_without_fn_name_uses_first_function():
    prog = "def helper(x):\n    return x + 1\n\ndef main_fn(x):\n    return x"
    gt = {"inputs": ["1"], "outputs": ["2"], "testtype": "functional", "fn_name": "", "time_limit": 2}
    assert cv.compute_score(fence(prog), gt)["score"] == 1.0


# --- code (assert scripts) ------------------------------------------------------------------------------

HE_STYLE_TEST = """
METADATA = {}

def check(candidate):
    assert candidate([1, 2, 3]) == 6
    assert candidate([]) == 0
    assert candidate((5,)) == 5
"""


def test_code_right_wrong_error_timeout():
    gt = code_gt([HE_STYLE_TEST + "\ncheck(total)"], fn_name="total", time_limit=1.0)
    right = cv.compute_score(fence("def total(xs):\n    return sum(xs)"), gt)
    assert right["score"] == 1.0 and right["feedback"] == ""

    wrong = cv.compute_score(fence("def total(xs):\n    return len(xs)"), gt)
    assert wrong["score"] == 0.0
    assert wrong["feedback"] == (
        "Wrong Answer\nFailed assertion:\nassert candidate([1, 2, 3]) == 6\nLast call:\ntotal([1, 2, 3])\nReturned:\n3"
    )

    error = cv.compute_score(fence("def total(xs):\n    return xs[0] + total(xs[1:])"), gt)
    assert error["score"] == 0.0 and error["error_in_test_cases"] == 1
    assert error["feedback"].startswith("Runtime Error\nTraceback (most recent call last):")
    assert "IndexError: list index out of range" in error["feedback"]
    assert error["feedback"].endswith("Last input:\ntotal([1, 2, 3])")

    t0 = time.monotonic()
    slow = cv.compute_score(fence("def total(xs):\n    while True: pass"), gt)
    assert time.monotonic() - t0 < 10
    assert slow["score"] == 0.0 and slow["timed_out"] == 1
    assert slow["feedback"].startswith("Time limit exceeded on input:\ntotal([1, 2, 3])")


def test_code_acc_over_several_scripts_and_context():
    context = "from typing import List\n\ndef helper(x: int) -> int:\n    return x * 10\n"
    scripts = ["assert scaled(1) == 10", "assert scaled(2) == 20", "assert helper(3) == 30 and scaled(0) == 1"]
    # the solution redefines helper; the tester keeps the trusted one from the context
    prog = "def helper(x):\n    return -1\n\ndef scaled(x: int) -> int:\n    return x * 10"
    result = cv.compute_score(fence(prog), code_gt(scripts, fn_name="scaled", context=context))
    assert result["score"] == 0.0 and abs(result["acc"] - 2 / 3) < 1e-9 and result["num_passed"] == 2


def test_code_types_cross_the_boundary():
    script = """
import math
assert f('list') == [1, 2] and type(f('list')) is list
assert f('tuple') == (1, 2) and type(f('tuple')) is tuple
assert f('set') == {1, 2} and f('frozenset') == frozenset({3})
assert f('dict') == {1: 'a', (2, 3): [4]}
assert f('bytes') == b'\\x00\\xff' and f('none') is None and f('bool') is True
assert math.isnan(f('nan')) and f('inf') == math.inf and f('complex') == 1 + 2j
assert f('big') == 2 ** 100
gen = f('gen')
assert list(gen) == [0, 1, 2]
obj = f('obj')
assert obj.value == 7 and obj.double(4) == 8 and len(obj) == 3
xs = [3, 1, 2]
sort_in_place(xs)
assert xs == [1, 2, 3]
try:
    f('raise')
    raise AssertionError('should have raised')
except ValueError:
    pass
"""
    prog = """
class Obj:
    value = 7
    def double(self, x):
        return 2 * x
    def __len__(self):
        return 3

def f(kind):
    if kind == 'raise':
        raise ValueError('bad')
    if kind == 'gen':
        return (i for i in range(3))
    return {'list': [1, 2], 'tuple': (1, 2), 'set': {1, 2}, 'frozenset': frozenset({3}),
            'dict': {1: 'a', (2, 3): [4]}, 'bytes': b'\\x00\\xff', 'none': None, 'bool': True,
            'nan': float('nan'), 'inf': float('inf'), 'complex': 1 + 2j, 'big': 2 ** 100,
            'obj': Obj()}[kind]

def sort_in_place(xs):
    xs.sort()
"""
    result = cv.compute_score(fence(prog), code_gt([script], fn_name="f"))
    assert result["score"] == 1.0, result["feedback"]


def test_code_load_error_and_helper_from_prompt():
    result = cv.compute_score(fence("import nosuchmodule_xyz\ndef f():\n    return 1"), code_gt(["assert f() == 1"]))
    assert result["score"] == 0.0 and "ModuleNotFoundError" in result["feedback"]
    # HumanEval/38 style: the test calls a helper that only the solution (prompt + completion) defines
    prog = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    return s[::-1]"
    script = "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\ncheck(decode)"
    assert cv.compute_score(fence(prog), code_gt([script]))["score"] == 1.0


# --- caps, batching, dispatch ---------------------------------------------------------------------------


def test_feedback_and_pred_are_capped():
    big = "x" * 5000
    prog = f"print('{big}')"
    result = cv.compute_score(fence(prog), stdin_gt(["a" * 4000, "b"], ["no", "nope"]))
    fb = result["feedback"]
    assert len(fb) <= cv.FEEDBACK_CAP
    for block in fb.split("\n\n"):
        for field in block.split("\n")[2::2]:  # Input / Output / Expected bodies
            assert len(field) <= cv.CLIP
    long_code = "# " + "y" * 20000 + "\nprint(1)"
    assert len(cv.compute_score(fence(long_code), stdin_gt(["x"], ["1"]))["pred"]) < 10_100


def test_score_many_parallel_in_order():
    items = []
    for i in range(8):
        prog = "print(int(input()) * 2)" if i % 2 == 0 else "print(0)"
        items.append((fence(prog), stdin_gt([str(i + 1)], [str(2 * (i + 1))])))
    items.append(("no code", stdin_gt(["1"], ["2"])))
    items.append((fence("print(1)"), "{broken", None))
    results = cv.score_many(items, num_workers=2)
    assert [r["score"] for r in results[:8]] == [1.0, 0.0] * 4
    assert results[8]["incorrect_format"] == 1
    assert results[9]["score"] == 0.0 and "not valid JSON" in results[9]["verifier_error"]


@pytest.mark.parametrize("source", ["code", "livecodebench", "humanevalplus", "mbppplus", "humaneval"])
def test_registered_data_sources(source):
    result = rewards.compute_score(source, fence(ADD), stdin_gt(["2 3"], ["5"]))
    assert result["score"] == 1.0 and result["acc"] == 1.0 and result["feedback"] == ""
    assert result["error_in_test_cases"] == 0 and result["timed_out"] == 0


def test_reward_scorer_pool_runs_code_rows():
    items = [
        ("code", fence(ADD), stdin_gt(["1 1"], ["2"]), None),
        ("livecodebench", fence("print(0)"), stdin_gt(["1 1"], ["2"]), {"truncated": True}),
    ]
    with rewards.RewardScorer(num_workers=1) as scorer:
        results = scorer.score(items)
    assert [r["score"] for r in results] == [1.0, 0.0]
    assert results[1]["truncated"] == 1 and "Wrong Answer" in results[1]["feedback"]
