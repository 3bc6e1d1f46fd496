"""The ``hf`` rollout's sampling step: exact distribution, seeds, log-probs, and memory without [B, T, V].

The sampler chooses tokens inside ``generate`` (inverse-CDF on one uniform per row and step) and records
each chosen token's log-prob; these tests check it against independent computations: empirical
frequencies against the softmax, the log-probs against a separate full forward pass, and a batch split
against the whole batch.
"""

from __future__ import annotations

import pytest
import torch

from workers.hf_rollout import HFRollout, SamplingParams, SeededSampler, _filter_top_k_top_p


def _tiny_model(vocab: int = 64, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            eos_token_id=1,
            pad_token_id=0,
            bos_token_id=2,
            initializer_range=0.5,
        )
    ).eval()


class _Tok:
    eos_token_id, pad_token_id = 1, 0


def _draw(logits: torch.Tensor, params: SamplingParams, seeds: list[int]) -> torch.Tensor:
    sampler = SeededSampler(seeds, params, logits.device)
    forced = sampler(None, logits.repeat(len(seeds), 1))
    return forced.argmax(-1)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, max_new_tokens=1),
        SamplingParams(temperature=0.7, max_new_tokens=1),
        SamplingParams(temperature=1.3, top_k=5, max_new_tokens=1),
        SamplingParams(temperature=1.0, top_p=0.6, max_new_tokens=1),
    ],
    ids=["t1", "t0.7", "topk5", "topp0.6"],
)
def test_sampled_frequencies_match_the_filtered_softmax(params):
    torch.manual_seed(3)
    logits = torch.randn(1, 12) * 2
    draws = _draw(logits, params, list(range(20000)))
    # Independent reference: filter with plain Python on sorted probabilities.
    scaled = (logits[0] / params.temperature).double()
    probs = torch.softmax(scaled, -1)
    keep = torch.ones(12, dtype=torch.bool)
    if params.top_k > 0:
        keep &= scaled >= scaled.sort(descending=True).values[params.top_k - 1]
    if params.top_p < 1.0:
        order = probs.argsort(descending=True).tolist()
        mass, kept = 0.0, set()
        for i in order:
            if mass >= params.top_p:
                break
            kept.add(i)
            mass += probs[i].item()
        keep &= torch.tensor([i in kept for i in range(12)])
    expected = torch.where(keep, probs, torch.zeros_like(probs))
    expected /= expected.sum()
    counts = torch.bincount(draws, minlength=12).double()
    assert counts[~keep].sum() == 0, "a filtered-out token was sampled"
    n = counts.sum()
    # Chi-square over the kept tokens (df <= 11; 40 is far past the 0.9999 quantile).
    chi2 = (((counts - n * expected) ** 2) / (n * expected).clamp(min=1e-12))[keep].sum().item()
    assert chi2 < 40, (chi2, counts, expected * n)


def test_zero_probability_tokens_are_never_chosen_and_greedy_is_argmax():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf"), -2.0]])
    draws = _draw(logits, SamplingParams(max_new_tokens=1), list(range(5000)))
    assert set(draws.tolist()) <= {0, 2, 4}
    greedy = _draw(logits, SamplingParams(do_sample=False, max_new_tokens=1), [0, 1])
    assert greedy.tolist() == [2, 2]


def test_top_p_keeps_the_top_token_even_when_it_alone_exceeds_p():
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    kept = _filter_top_k_top_p(logits, SamplingParams(top_p=0.1))
    assert torch.isfinite(kept).tolist() == [[True, False, False]]


def _rollout(calculate_log_probs: bool = True, micro: int = 256):
    return HFRollout(_tiny_model(), _Tok(), micro_batch_size=micro, calculate_log_probs=calculate_log_probs)


def _prompts():
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 13, 14, 15, 16]])
    return ids, (ids != 0).long()


def test_same_seeds_give_the_same_samples_whatever_the_batching():
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10)
    ids, mask = _prompts()
    seeds = [1000 + i for i in range(12)]
    whole = _rollout().generate(ids, mask, params, seeds)
    split = _rollout(micro=5).generate(ids, mask, params, seeds)
    assert torch.equal(whole["responses"], split["responses"])
    assert torch.allclose(whole["rollout_log_probs"], split["rollout_log_probs"], atol=1e-5)
    other = _rollout().generate(ids, mask, params, [2000 + i for i in range(12)])
    assert not torch.equal(whole["responses"], other["responses"])


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_rollout_log_probs_equal_a_separate_forward_pass(temperature):
    params = SamplingParams(n=2, temperature=temperature, max_new_tokens=8)
    ids, mask = _prompts()
    rollout = _rollout()
    out = rollout.generate(ids, mask, params, list(range(6)))
    full = torch.cat([ids.repeat_interleave(2, 0), out["responses"]], dim=1)
    full_mask = torch.cat([mask.repeat_interleave(2, 0), out["response_mask"]], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = rollout.model(input_ids=full, attention_mask=full_mask, position_ids=positions).logits
    logits = logits[:, ids.shape[1] - 1 : -1].double() / temperature
    reference = torch.log_softmax(logits, -1).gather(-1, out["responses"].unsqueeze(-1)).squeeze(-1)
    reference = reference * out["response_mask"]
    assert torch.allclose(out["rollout_log_probs"].double(), reference, atol=2e-4)
    assert out["response_mask"].sum() > 0


def test_calculate_log_probs_false_returns_no_log_probs():
    ids, mask = _prompts()
    out = _rollout(calculate_log_probs=False).generate(ids, mask, SamplingParams(max_new_tokens=4), [0, 1, 2])
    assert "rollout_log_probs" not in out and out["responses"].shape == (3, 4)


_MEMORY_PROBE = """
import json, torch
from tests.workers.test_rollout_sampling import _Tok, _peak_during, _tiny_model
from workers.hf_rollout import HFRollout, SamplingParams
vocab, batch = 20000, 64
rollout = HFRollout(_tiny_model(vocab=vocab), _Tok(), calculate_log_probs=True)
ids = torch.randint(3, vocab, (batch, 4))
run = lambda steps: (lambda: rollout.generate(ids, torch.ones_like(ids), SamplingParams(max_new_tokens=steps),
                                              list(range(batch))))
run(16)()  # warm-up: allocator pools, kernels
print(json.dumps({"short": _peak_during(run(16)), "long": _peak_during(run(256))}))
"""


def test_rollout_memory_does_not_grow_with_vocabulary_times_length():
    """A [B, T, V] history of float32 logits for this batch would be 1.3 GB; the sampler keeps [B, T], so
    the peak of a 256-token rollout stays well below the peak of a 16-token one plus that history
    (measured in a fresh process: the peak RSS of this one depends on the tests that ran before)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # A fixed mmap threshold turns off glibc's dynamic one, under which freed [B, V] buffers are reused from
    # a heap that fragments: identical runs of this probe then peaked anywhere from 0.47 to 1.95 GB (the
    # allocator, not live tensors). With it, RSS follows the live buffers; it costs ~30% rollout time on
    # CPU, so only the probe uses it.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, timeout=600, cwd=root, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    history_gb = 64 * 256 * 20000 * 4 / 1e9
    assert peaks["long"] - peaks["short"] < history_gb / 4, (peaks, history_gb)


def _peak_during(fn) -> float:
    """Peak RSS (GB) of this process while ``fn`` runs (Linux: VmHWM, reset through clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024 / 1e9


def test_inverse_cdf_needs_one_uniform_per_row_and_step_from_the_row_seed():
    a = SeededSampler([1, 2, 3], SamplingParams(max_new_tokens=7), torch.device("cpu"))
    b = SeededSampler([3, 9], SamplingParams(max_new_tokens=7), torch.device("cpu"))
    assert a.uniforms.shape == (3, 7)
    assert torch.equal(a.uniforms[2], b.uniforms[0])  # seed 3's draws, wherever the row sits
    assert not torch.equal(a.uniforms[0], a.uniforms[1])


def test_frequencies_across_cdf_blocks_and_the_short_last_block():
    """Vocabulary 600 = two full 256-token blocks + a short one; mass on both sides of each boundary."""
    support = [0, 3, 255, 256, 300, 511, 512, 599]
    logits = torch.full((1, 600), float("-inf"))
    logits[0, support] = torch.tensor([0.5, -1.0, 1.0, 0.0, 2.0, -0.5, 0.3, 1.5])
    draws = _draw(logits, SamplingParams(max_new_tokens=1), list(range(20000)))
    counts = torch.bincount(draws, minlength=600).double()
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(support)
    expected = torch.softmax(logits[0].double(), -1) * counts.sum()
    chi2 = ((counts[support] - expected[support]) ** 2 / expected[support]).sum().item()
    assert chi2 < 35, (chi2, counts[support], expected[support])


@pytest.mark.parametrize("micro", [256, 5])
def test_shared_prefill_gives_the_plain_prefills_samples(micro, monkeypatch):
    """A prompt's n samples share one prefill of its prompt (less its last token), expanded into each
    sample's cache: the same samples and log-probs as prefilling every sample's copy, also when a
    micro-batch cuts a prompt's samples apart and for a prompt of one real token."""
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 13, 14, 15, 16], [0, 0, 0, 0, 17]])
    mask = (ids != 0).long()
    seeds = [300 + i for i in range(16)]
    rollout = _rollout(micro=micro)
    calls = []
    rollout.model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    shared = rollout.generate(ids, mask, params, seeds)
    assert calls[0] == (min(4, (micro - 1) // 4 + 1), 4)  # the distinct prompts of the first micro-batch, once each
    monkeypatch.setattr(HFRollout, "_shared_prefill", lambda *a: {})
    plain = rollout.generate(ids, mask, params, seeds)
    assert torch.equal(shared["responses"], plain["responses"])
    assert torch.equal(shared["response_mask"], plain["response_mask"])
    torch.testing.assert_close(shared["rollout_log_probs"], plain["rollout_log_probs"], atol=1e-5, rtol=0)


def test_token_budget_bounds_rows_per_generate_call_and_keeps_the_samples(monkeypatch):
    """rollout.generate_max_token_len_per_gpu: each generate() call holds at most budget // (prompt + response)
    rows (its KV cache within the budget); the samples are those of one unbounded call."""
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10)
    ids, mask = _prompts()  # 3 prompts of width 5 -> 12 rows of 15 tokens
    seeds = [1000 + i for i in range(12)]
    whole = _rollout().generate(ids, mask, params, seeds)
    bounded = HFRollout(_tiny_model(), _Tok(), micro_batch_size=256, max_token_len=50)
    calls = []
    original = bounded.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(bounded.model, "generate", counting)
    out = bounded.generate(ids, mask, params, seeds)
    assert calls == [3, 3, 3, 3]  # 50 // 15 rows per call
    assert torch.equal(out["responses"], whole["responses"])
    assert torch.allclose(out["rollout_log_probs"], whole["rollout_log_probs"], atol=1e-5)
    assert bounded.rows_per_call(prompt_width=100, max_new_tokens=10) == 1  # longer than the budget: alone
