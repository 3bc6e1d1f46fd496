"""workers.shared_prefix: scoring each group's common teacher-prompt prefix once gives the plain forward's
hidden states (float64 1e-10: only summation order differs; float32 2e-5).
"""

from __future__ import annotations

import pytest
import torch

from workers import forward, model_utils
from workers.shared_prefix import prefix_clusters, shared_prefix_hidden, shared_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(dtype, attn="sdpa"):
    return model_utils.load_causal_lm(model_utils.resolve_model_path("embedded"), dtype=dtype,
                                      attn_implementation=attn)


def _teacher_batch(prompts: list[list[int]], response_lengths: list[int], response_width: int, seed: int = 0):
    """``[left-padded prompt | right-padded response]`` rows from token lists, as build_teacher_inputs lays
    them out."""
    g = torch.Generator().manual_seed(seed)
    width = max(map(len, prompts))
    b = len(prompts)
    prompt = torch.zeros(b, width, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt)
    for i, p in enumerate(prompts):
        prompt[i, width - len(p):] = torch.tensor(p)
        prompt_mask[i, width - len(p):] = 1
    response_mask = (torch.arange(response_width) < torch.tensor(response_lengths).unsqueeze(1)).long()
    responses = torch.randint(3, 264, (b, response_width), generator=g) * response_mask
    mask = torch.cat([prompt_mask, response_mask], 1)
    return torch.cat([prompt, responses], 1), mask, (mask.cumsum(1) - 1).clamp(min=0), response_mask


def _prompts(seed: int = 0):
    """Prompts that share prefixes at several depths (a, then a + c), differ after them with different
    lengths, one identical to another, one sharing nothing."""
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, 264, (n,), generator=g).tolist()  # noqa: E731
    a, b, c = tok(30), tok(12), tok(8)
    prompts = [a + c + tok(9), a + tok(4), b + tok(20), a + c + tok(9)[:2], tok(17), b + tok(3), a[:25] + tok(6)]
    prompts.append(list(prompts[0]))
    return prompts


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_shared_prefix_hidden_equals_the_plain_forward(dtype, tol):
    model = _model(dtype)
    prompts = _prompts()
    ids, mask, pos, response_mask = _teacher_batch(prompts, [5, 1, 7, 3, 7, 0, 6, 2], response_width=7)
    plain = forward.response_hidden(model, ids, mask, pos, response_mask)
    shared = shared_prefix_hidden(model, ids, mask, pos, response_mask)
    assert shared is not None and shared.shape == plain.shape == (int(response_mask.sum()), model.config.hidden_size)
    torch.testing.assert_close(shared, plain, rtol=0, atol=tol)
    # and the model is left as it was (its head restored)
    assert forward.output_head(model)[1] is model.get_output_embeddings()


def test_rest_pass_in_row_chunks_gives_the_same_hidden_states(monkeypatch):
    """Under a small cache budget the rest pass runs a row at a time (each with its own copy of the prefix
    cache); the output is the same, in the same row-major order."""
    import workers.shared_prefix as shared_prefix

    model = _model(torch.float64)
    prompts = _prompts(seed=5)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [3, 2, 5, 1, 4, 5, 2, 3], response_width=5, seed=5)
    whole = shared_prefix_hidden(model, ids, mask, pos, response_mask)
    monkeypatch.setitem(shared_prefix._CACHE_BYTES, "cpu", 1)  # one row per rest pass
    assert all(len(c) == 1 for c in shared_prefix._rest_chunks([3, 9, 4, 30], 5, 40, 1 // 8))
    torch.testing.assert_close(shared_prefix_hidden(model, ids, mask, pos, response_mask), whole, rtol=0, atol=1e-10)


def test_rest_chunks_cover_every_row_once_with_bounded_padding():
    from workers.shared_prefix import _rest_chunks

    tails = [12, 170, 15, 11, 160, 14, 90, 13, 165, 12]
    chunks = _rest_chunks(tails, 16, 200, max_cached_tokens=10**9)
    assert sorted(r for c in chunks for r in c) == list(range(len(tails)))
    for c in chunks:
        widths = [tails[r] + 16 for r in c]
        assert len(c) * max(widths) <= 1.25 * sum(widths)
    assert len(chunks) <= 4  # short, medium and long tails: not one chunk per row
    # the cache bound: at most 3 rows of 200 + 186 columns
    assert max(len(c) for c in _rest_chunks([170] * 10, 16, 200, max_cached_tokens=3 * 386)) == 3


def test_shared_prefix_hidden_with_eager_attention():
    model, reference = _model(torch.float32, "eager"), _model(torch.float32)
    prompts = _prompts(seed=3)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2, 4, 4, 1, 3, 4, 4, 2], response_width=4, seed=3)
    torch.testing.assert_close(shared_prefix_hidden(model, ids, mask, pos, response_mask),
                               forward.response_hidden(reference, ids, mask, pos, response_mask), rtol=0, atol=2e-5)


def _brute_force_saving(prompts: list[list[int]]) -> int:
    """The best saving over every partition of the rows (a reference for the sorted-order DP)."""
    def lcp(members):
        n, cap = 0, min(len(prompts[m]) for m in members) - 1
        while n < cap and all(prompts[m][n] == prompts[members[0]][n] for m in members):
            n += 1
        return n

    def partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for part in partitions(rest):
            yield [[first]] + part
            for i in range(len(part)):
                yield part[:i] + [[first] + part[i]] + part[i + 1:]

    return max(sum((len(c) - 1) * lcp(c) for c in part) for part in partitions(list(range(len(prompts)))))


def test_prefix_clusters_save_nearly_what_the_best_partition_saves():
    prompts = _prompts()
    ids, mask, _, _ = _teacher_batch(prompts, [1] * len(prompts), response_width=1)
    row_cluster, prefix_len, starts = prefix_clusters(ids, mask, 1)
    assert starts.tolist() == [ids.shape[1] - 1 - len(p) for p in prompts]
    for c in range(len(prefix_len)):  # each cluster's prefix is common to its members, within each prompt
        members = [prompts[r] for r in range(len(prompts)) if row_cluster[r] == c]
        p = int(prefix_len[c])
        assert all(m[:p] == members[0][:p] and p <= len(m) - 1 for m in members)
    saving = int(prefix_len[row_cluster].sum() - prefix_len.sum())
    # Contiguous runs of the sorted order are optimal but for the one-token-short cap of a member whose
    # prompt is a prefix of another's (here: 112 of the best partition's 113).
    best = _brute_force_saving(prompts)
    assert 0.95 * best <= saving <= best and saving > 0
    plain, shared = shared_tokens(ids, mask, 1)
    assert plain == sum(map(len, prompts)) + len(prompts) and shared == plain - saving


def test_prompt_groups_that_differ_early_still_share_their_later_common_prefix():
    """Rows of different prompt uids, or whose contexts differ right after the question, cluster by content."""
    g = torch.Generator().manual_seed(1)
    tok = lambda n: torch.randint(3, 264, (n,), generator=g).tolist()  # noqa: E731
    head, peers = tok(10), tok(60)
    x = tok(5)
    prompts = [head + peers + tok(3) for _ in range(3)] + [head + x + peers + tok(2) for _ in range(3)]
    ids, mask, _, _ = _teacher_batch(prompts, [1] * 6, response_width=1)
    row_cluster, prefix_len, _ = prefix_clusters(ids, mask, 1)
    assert sorted(int(prefix_len[row_cluster[r]]) for r in range(6)) == [70] * 3 + [75] * 3


def test_a_one_token_prompt_falls_back_to_the_plain_forward():
    model = _model(torch.float64)
    ids, mask, pos, response_mask = _teacher_batch([[5], [5, 6, 7]], [2, 2], response_width=2)
    assert shared_prefix_hidden(model, ids, mask, pos, response_mask) is None


def test_little_to_share_falls_back_to_the_plain_forward():
    model = _model(torch.float64)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 264, (20,), generator=g).tolist() for _ in range(4)]
    prompts[1][:2] = prompts[0][:2]  # 2 shared tokens of 84: not worth a second call
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2] * 4, response_width=2)
    assert shared_prefix_hidden(model, ids, mask, pos, response_mask) is None
