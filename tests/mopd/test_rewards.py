"""mopd.rewards: dispatch, normalisation, custom files, and the process-pool scorer."""

import pickle
import textwrap

import numpy as np
import pytest

from mopd import rewards
from mopd.rewards import RewardScorer, compute_score, load_reward_fn, normalize_result, register_reward, registry

# Module-level test verifiers (picklable by reference, so the pool workers can import them too).


def exact_match(solution_str, ground_truth, extra_info=None):
    ok = solution_str.strip() == str(ground_truth)
    return {
        "score": float(ok),
        "acc": float(ok),
        "pred": solution_str.strip(),
        "incorrect_format": 0,
        "feedback": "" if ok else f"expected {ground_truth}",
        "length": len(solution_str),
    }


def bare_bool(solution_str, ground_truth, extra_info=None):
    return solution_str == ground_truth


def explodes_on_boom(solution_str, ground_truth, extra_info=None):
    if solution_str == "boom":
        raise RuntimeError("kaboom")
    return exact_match(solution_str, ground_truth, extra_info)


def sleeps(solution_str, ground_truth, extra_info=None):
    import time

    if solution_str == "slow":
        time.sleep(10)
    return 1.0


@pytest.fixture(autouse=True)
def _registry():
    saved = dict(registry._REGISTRY)
    register_reward(["test_exact", "test_exact_alias"], exact_match)
    register_reward("test_bool", bare_bool)
    register_reward("test_explodes", explodes_on_boom)
    register_reward("test_sleeps", sleeps)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def _items():
    out = []
    for i in range(23):
        gt = str(i * 7)
        answer = gt if i % 3 else "wrong"
        source = ["test_exact", "test_exact_alias", "test_bool"][i % 3]
        out.append((source, answer, gt, {"index": i}))
    out.insert(5, ("test_explodes", "boom", "1", None))
    return out


# --- dispatch and normalisation ---------------------------------------------------------------------


def test_dispatch_keeps_extra_keys_and_fills_defaults():
    result = compute_score("test_exact", " 42 ", "42")
    assert result == {"score": 1.0, "acc": 1.0, "pred": "42", "incorrect_format": 0, "feedback": "", "length": 4}
    wrong = compute_score("test_exact_alias", "41", "42", {"index": 0})
    assert wrong["score"] == 0.0 and wrong["feedback"] == "expected 42"


def test_bare_float_or_bool_becomes_full_dict():
    assert compute_score("test_bool", "a", "a") == {
        "score": 1.0,
        "acc": 1.0,
        "pred": "",
        "incorrect_format": 0,
        "feedback": "",
    }
    assert compute_score("test_bool", "a", "b")["score"] == 0.0
    for value in (0.5, 1, np.float32(0.25), np.bool_(True)):
        result = normalize_result(value)
        assert result["score"] == float(value) and isinstance(result["score"], float)
        assert result["acc"] == float(value) and result["feedback"] == "" and result["pred"] == ""


def test_partial_dict_is_completed():
    result = normalize_result({"score": 1, "feedback": None, "incorrect_format": True, "pred": 3})
    assert result == {"score": 1.0, "acc": 1.0, "pred": "3", "incorrect_format": 1, "feedback": ""}
    assert isinstance(result["score"], float)


def test_bad_results_are_errors():
    with pytest.raises(ValueError, match="without 'score'"):
        normalize_result({"acc": 1.0})
    with pytest.raises(TypeError, match="str"):
        normalize_result("1.0")


def test_unknown_data_source_names_it_and_the_way_out():
    with pytest.raises(ValueError) as info:
        compute_score("no_such_source", "x", "y")
    message = str(info.value)
    assert "'no_such_source'" in message
    assert "embedded_arith" in message and "test_exact" in message
    assert "custom_reward_function.path" in message


def test_embedded_task_is_registered_by_default():
    assert "embedded_arith" in rewards.registered_data_sources()
    assert registry._REGISTRY["embedded_arith"] is registry._embedded_arith


def test_register_reward_validates():
    with pytest.raises(TypeError):
        register_reward("x", 3)
    with pytest.raises(ValueError):
        register_reward([], exact_match)
    with pytest.raises(ValueError):
        register_reward([""], exact_match)


# --- custom reward functions from a file ------------------------------------------------------------

CUSTOM = textwrap.dedent(
    """
    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        # verl-style: a dict with score, plus something of its own
        hit = solution_str.strip() == ground_truth
        return {"score": 2.0 if hit else -1.0, "source_seen": data_source}

    def as_float(data_source, solution_str, ground_truth, extra_info=None):
        return float(solution_str == ground_truth)
    """
)


@pytest.fixture
def custom_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(CUSTOM)
    return path


def test_load_none_is_builtin():
    assert load_reward_fn(None) is compute_score


def test_load_custom_file_by_path(custom_file):
    fn = load_reward_fn(str(custom_file))
    result = fn("anything", " y ", "y", None)
    assert result == {
        "score": 2.0,
        "acc": 2.0,
        "pred": "",
        "incorrect_format": 0,
        "feedback": "",
        "source_seen": "anything",
    }
    other = load_reward_fn(custom_file, name="as_float")
    assert other("d", "a", "b", {}) == {"score": 0.0, "acc": 0.0, "pred": "", "incorrect_format": 0, "feedback": ""}
    clone = pickle.loads(pickle.dumps(other))
    assert clone("d", "a", "a", None)["score"] == 1.0


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(FileNotFoundError) as info:
        load_reward_fn(str(missing))
    assert "custom_reward_function.path" in str(info.value) and str(missing) in str(info.value)


def test_load_missing_function(custom_file):
    with pytest.raises(AttributeError) as info:
        load_reward_fn(str(custom_file), name="score_it")
    message = str(info.value)
    assert "custom_reward_function.name" in message and "'score_it'" in message and str(custom_file) in message


def test_load_broken_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def compute_score(:\n")
    with pytest.raises(ImportError, match="bad.py"):
        load_reward_fn(str(bad))


# --- RewardScorer -------------------------------------------------------------------------------------


def test_serial_scorer_in_order_with_isolated_error():
    items = _items()
    results = RewardScorer(compute_score).score(items)
    assert len(results) == len(items)
    for (source, answer, gt, _), result in zip(items, results):
        if source == "test_explodes":
            assert result["score"] == 0.0 and result["acc"] == 0.0 and result["feedback"] == ""
            assert result["verifier_error"] == "RuntimeError: kaboom"
        else:
            assert result["score"] == float(answer == gt)
            assert "verifier_error" not in result
    assert RewardScorer(compute_score).score([]) == []


def test_unknown_source_in_batch_is_an_item_error():
    (result,) = RewardScorer(compute_score).score([("nope", "a", "b", None)])
    assert result["score"] == 0.0 and result["verifier_error"].startswith("ValueError: no reward function")


def test_serial_timeout():
    results = RewardScorer(compute_score, timeout_s=0.2).score(
        [("test_sleeps", "fast", "", None), ("test_sleeps", "slow", "", None)]
    )
    assert results[0]["score"] == 1.0
    assert results[1]["score"] == 0.0 and results[1]["verifier_error"].startswith("TimeoutError")


def test_bad_item_shape():
    with pytest.raises(ValueError, match="item 0"):
        RewardScorer(compute_score).score([("test_exact", "a", "b")])


def test_unpicklable_fn_rejected_for_pool():
    with pytest.raises(TypeError, match="num_workers=0"):
        RewardScorer(lambda *a: 1.0, num_workers=2)


def test_process_pool_matches_serial(custom_file):
    items = _items()
    serial = RewardScorer(compute_score).score(items)
    file_fn = load_reward_fn(str(custom_file))
    file_items = [("src", answer, gt, info) for (_, answer, gt, info) in items]
    file_serial = RewardScorer(file_fn).score(file_items)

    with RewardScorer(compute_score, num_workers=2, timeout_s=0.5) as pooled:
        assert pooled.score(items) == serial
        # registered-in-parent sources reach the workers; a slow item times out alone
        timed = pooled.score([("test_sleeps", "slow", "", None), ("test_sleeps", "fast", "", None)])
        assert timed[0]["verifier_error"].startswith("TimeoutError") and timed[1]["score"] == 1.0
    assert pooled._pool is None

    file_pooled = RewardScorer(file_fn, num_workers=2)
    try:
        assert file_pooled.score(file_items) == file_serial
        assert file_serial[1]["score"] == 2.0 and file_serial[0]["score"] == -1.0
    finally:
        file_pooled.close()


def test_embedded_adapter_calls_the_task_lazily(monkeypatch):
    import sys
    import types

    import mopd.embedded

    calls = []
    fake = types.ModuleType("mopd.embedded.embedded_task")
    fake.DATA_SOURCE = "embedded_arith"
    fake.compute_score = lambda solution_str, ground_truth: (
        calls.append((solution_str, ground_truth))
        or {
            "score": 1.0,
            "acc": 1.0,
            "pred": "7",
            "incorrect_format": 0,
            "feedback": "",
        }
    )
    monkeypatch.setitem(sys.modules, "mopd.embedded.embedded_task", fake)
    monkeypatch.setattr(mopd.embedded, "embedded_task", fake, raising=False)
    assert compute_score("embedded_arith", "The answer is 7", "7", {"index": 3})["pred"] == "7"
    assert calls == [("The answer is 7", "7")]


# --- bad rewards: errors carry their traceback, non-finite scores are failures ----------------------


def test_error_result_carries_the_traceback():
    (result,) = RewardScorer(compute_score).score([("test_explodes", "boom", "1", None)])
    assert result["verifier_traceback"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: kaboom" in result["verifier_traceback"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_score_is_a_counted_failure(bad):
    results = RewardScorer(lambda *a: bad).score([("x", "a", "b", None), ("x", "a", "b", None)])
    for result in results:
        assert result["score"] == 0.0 and result["acc"] == 0.0 and result["nonfinite_score"] == repr(bad)
    health = rewards.summarize_health(results + [normalize_result(1.0)])
    assert health["num_nonfinite"] == 2 and health["nonfinite_fraction"] == pytest.approx(2 / 3)
    assert health["num_errors"] == 0 and health["first_error"] is None
    assert rewards.apply_nonfinite_rule(normalize_result(0.5)) == normalize_result(0.5)  # finite: untouched
