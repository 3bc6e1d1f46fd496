"""The ``hf`` rollout engine through its interface only (``HFRollout.generate`` and ``load_weights``), on
the shipped embedded base model: shapes, masks through the first EOS, log-probs, and seeds that fix each
sample whatever the batch it is generated in."""

from __future__ import annotations

import pytest
import torch

from mopd.common.models import load_causal_lm, load_tokenizer, resolve_model_path
from mopd.embedded import embedded_task
from workers.hf_rollout import HFRollout, SamplingParams

MAX_NEW = 10


@pytest.fixture(scope="module")
def parts():
    path = resolve_model_path("embedded")
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype=torch.float32, attn_implementation="sdpa")
    problems = embedded_task.make_problems("test", 6, seed=3)
    texts = [
        tokenizer.apply_chat_template(embedded_task.prompt_messages(p), tokenize=False, add_generation_prompt=True)
        for p in problems
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return model, tokenizer, enc["input_ids"], enc["attention_mask"]


def rollout(parts, micro_batch_size=256):
    model, tokenizer, _, _ = parts
    return HFRollout(model, tokenizer, micro_batch_size=micro_batch_size)


def sample(n=2, **kw):
    return SamplingParams(n=n, max_new_tokens=MAX_NEW, **kw)


def test_shapes_masks_through_first_eos_and_log_probs(parts):
    _, tokenizer, ids, mask = parts
    engine = rollout(parts)
    out = engine.generate(ids, mask, sample(n=3), list(range(ids.shape[0] * 3)))
    rows = ids.shape[0] * 3
    assert set(out) == {"responses", "response_mask", "rollout_log_probs"}
    assert out["responses"].shape == out["response_mask"].shape == out["rollout_log_probs"].shape == (rows, MAX_NEW)
    eos = tokenizer.eos_token_id
    ended = 0
    for row, row_mask in zip(out["responses"].tolist(), out["response_mask"].tolist()):
        if eos in row:
            first = row.index(eos)
            ended += 1
            assert row_mask == [1] * (first + 1) + [0] * (MAX_NEW - first - 1)  # up to and including the EOS
        else:
            assert row_mask == [1] * MAX_NEW  # hit the budget: every token counts
    assert ended > 0  # the embedded base answers and stops well within the budget
    lp, m = out["rollout_log_probs"], out["response_mask"].bool()
    assert torch.isfinite(lp[m]).all() and (lp[m] <= 0).all() and (lp[m] < 0).any()


def test_samples_follow_their_seeds_not_the_batch(parts):
    _, _, ids, mask = parts
    seeds = [1000 + i for i in range(ids.shape[0] * 2)]
    whole = rollout(parts).generate(ids, mask, sample(), seeds)
    # the same prompts in two calls (same padded width), and one sample per forward
    halves = [
        rollout(parts).generate(ids[s : s + 3], mask[s : s + 3], sample(), seeds[2 * s : 2 * s + 6]) for s in (0, 3)
    ]
    one_by_one = rollout(parts, micro_batch_size=1).generate(ids, mask, sample(), seeds)
    for other in (halves, [one_by_one]):
        responses = torch.cat([o["responses"] for o in other])
        masks = torch.cat([o["response_mask"] for o in other])
        assert torch.equal(responses * masks, whole["responses"] * whole["response_mask"])
        assert torch.equal(masks, whole["response_mask"])
        log_probs = torch.cat([o["rollout_log_probs"] for o in other])
        assert torch.allclose(log_probs, whole["rollout_log_probs"], atol=1e-4)


def test_same_seeds_same_samples_other_seeds_other_samples(parts):
    _, _, ids, mask = parts
    engine = rollout(parts)
    seeds = list(range(ids.shape[0] * 4))
    a = engine.generate(ids, mask, sample(n=4), seeds)
    b = engine.generate(ids, mask, sample(n=4), seeds)
    c = engine.generate(ids, mask, sample(n=4), [s + 77 for s in seeds])
    assert torch.equal(a["responses"], b["responses"])
    assert not torch.equal(a["responses"], c["responses"])


def test_greedy_ignores_seeds_and_repeats_each_prompt(parts):
    _, _, ids, mask = parts
    engine = rollout(parts)
    out = engine.generate(ids, mask, sample(n=2, do_sample=False), list(range(ids.shape[0] * 2)))
    again = engine.generate(ids, mask, sample(n=2, do_sample=False), [9] * (ids.shape[0] * 2))
    assert torch.equal(out["responses"], again["responses"])
    assert torch.equal(out["responses"][0::2], out["responses"][1::2])  # n samples of a prompt are interleaved


def test_one_seed_per_sample_is_required(parts):
    _, _, ids, mask = parts
    with pytest.raises(ValueError, match="one seed per sample"):
        rollout(parts).generate(ids, mask, sample(n=2), [0] * ids.shape[0])


def test_load_weights_changes_what_is_generated_and_rejects_foreign_weights(parts):
    model, tokenizer, ids, mask = parts
    engine = HFRollout(
        load_causal_lm(resolve_model_path("embedded"), dtype=torch.float32, attn_implementation="sdpa"), tokenizer
    )
    greedy, seeds = sample(n=1, do_sample=False), list(range(ids.shape[0]))
    before = engine.generate(ids, mask, greedy, seeds)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    perturbed = {k: v + 0.5 * torch.randn_like(v) if v.dtype.is_floating_point else v for k, v in original.items()}
    engine.load_weights(perturbed)
    changed = engine.generate(ids, mask, greedy, seeds)
    assert not torch.equal(changed["rollout_log_probs"], before["rollout_log_probs"])
    engine.load_weights(original)
    restored = engine.generate(ids, mask, greedy, seeds)
    assert torch.equal(restored["responses"], before["responses"])
    with pytest.raises(RuntimeError):
        engine.load_weights({"not.a.weight": torch.zeros(1)})
