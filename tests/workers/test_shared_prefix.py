"""workers.shared_prefix: scoring each group's common teacher-prompt prefix once gives the plain forward's
hidden states (float64 1e-10: only summation order differs; float32 2e-5).
"""

from __future__ import annotations

import pytest
import torch

from workers import forward, model_utils
from workers.shared_prefix import group_prefixes, shared_prefix_hidden, shared_tokens

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


def _groups(seed: int = 0):
    """Three prompt groups: members share a prefix, then differ (peer texts), with different lengths; one
    member is identical to another; one group has a single row."""
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, 264, (n,), generator=g).tolist()  # noqa: E731
    a, b = tok(30), tok(12)
    prompts = [a + tok(9), a + tok(4), b + tok(20), a + tok(9)[:2], tok(17), b + tok(3), a[:25] + tok(6)]
    prompts.append(list(prompts[0]))
    uids = ["a", "a", "b", "a", "c", "b", "a", "a"]
    return prompts, uids


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_shared_prefix_hidden_equals_the_plain_forward(dtype, tol):
    model = _model(dtype)
    prompts, uids = _groups()
    ids, mask, pos, response_mask = _teacher_batch(prompts, [5, 1, 7, 3, 7, 0, 6, 2], response_width=7)
    plain = forward.response_hidden(model, ids, mask, pos, response_mask)
    shared = shared_prefix_hidden(model, ids, mask, pos, response_mask, uids)
    assert shared is not None and shared.shape == plain.shape == (int(response_mask.sum()), model.config.hidden_size)
    torch.testing.assert_close(shared, plain, rtol=0, atol=tol)
    # and the model is left as it was (its head restored)
    assert forward.output_head(model)[1] is model.get_output_embeddings()


def test_shared_prefix_hidden_with_eager_attention():
    model, reference = _model(torch.float32, "eager"), _model(torch.float32)
    prompts, uids = _groups(seed=3)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2, 4, 4, 1, 3, 4, 4, 2], response_width=4, seed=3)
    torch.testing.assert_close(shared_prefix_hidden(model, ids, mask, pos, response_mask, uids),
                               forward.response_hidden(reference, ids, mask, pos, response_mask), rtol=0, atol=2e-5)


def test_group_prefixes_against_a_list_reference():
    prompts, uids = _groups()
    ids, mask, _, response_mask = _teacher_batch(prompts, [1] * len(prompts), response_width=1)
    row_group, prefix_len, starts = group_prefixes(ids, mask, 1, uids)
    for key in set(uids):
        members = [prompts[i] for i, u in enumerate(uids) if u == key]
        common = 0
        while all(len(m) > common and m[common] == members[0][common] for m in members):
            common += 1
        expected = min(common, min(map(len, members)) - 1)
        rows = [i for i, u in enumerate(uids) if u == key]
        assert {int(prefix_len[row_group[r]]) for r in rows} == {expected}, key
    assert starts.tolist() == [ids.shape[1] - 1 - len(p) for p in prompts]
    # the singleton group's prefix is its own prompt less the last token
    assert int(prefix_len[row_group[4]]) == len(prompts[4]) - 1
    plain, shared = shared_tokens(mask, 1, uids, ids)
    assert plain == sum(map(len, prompts)) + len(prompts)
    assert shared == plain - sum(int(prefix_len[row_group[r]]) for r in range(len(prompts))) + int(prefix_len.sum())


def test_a_one_token_prompt_falls_back_to_the_plain_forward():
    model = _model(torch.float64)
    ids, mask, pos, response_mask = _teacher_batch([[5], [5, 6, 7]], [2, 2], response_width=2)
    assert shared_prefix_hidden(model, ids, mask, pos, response_mask, ["x", "x"]) is None
