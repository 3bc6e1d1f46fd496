"""workers.shared_prefix: scoring each shared teacher-prompt prefix once, as a tree of prefixes, gives the
plain forward's hidden states (float64 1e-10: only summation order differs; float32 2e-5).
"""

from __future__ import annotations

import pytest
import torch

from workers import forward, model_utils, prefix_plan, shared_prefix
from workers.shared_prefix import shared_prefix_hidden

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(dtype, attn="sdpa"):
    return model_utils.load_causal_lm(model_utils.resolve_model_path("embedded"), dtype=dtype, attn_implementation=attn)


def _teacher_batch(prompts: list[list[int]], response_lengths: list[int], response_width: int, seed: int = 0):
    """``[left-padded prompt | right-padded response]`` rows from token lists, as build_teacher_inputs lays
    them out."""
    g = torch.Generator().manual_seed(seed)
    width = max(map(len, prompts))
    b = len(prompts)
    prompt = torch.zeros(b, width, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt)
    for i, p in enumerate(prompts):
        prompt[i, width - len(p) :] = torch.tensor(p)
        prompt_mask[i, width - len(p) :] = 1
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


def _group_prompts(seed: int = 0):
    """MOPD-like teacher prompts: a chat template, then per group a question, then two of the group's
    peer responses in an order that depends on the row, then the row's own closing tokens."""
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, 264, (n,), generator=g).tolist()  # noqa: E731
    template, prompts = tok(6), []
    for _ in range(2):
        question, peers = tok(9), [tok(20 + i) for i in range(3)]
        for first, second in [(0, 1), (0, 1), (0, 2), (1, 2)]:
            prompts.append(template + question + peers[first] + peers[second] + tok(2))
    return prompts


@pytest.mark.parametrize("prompts,depths", [(_prompts(), 2), (_group_prompts(), 2)], ids=["mixed", "groups"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_shared_prefix_hidden_equals_the_plain_forward(dtype, tol, prompts, depths):
    model = _model(dtype)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [5, 1, 7, 3, 7, 0, 6, 2], response_width=7)
    plain = forward.response_hidden(model, ids, mask, pos, response_mask)
    batch_plan = prefix_plan.plan(model, ids, mask, response_mask)
    assert len(batch_plan.depths) == depths  # nodes under nodes: shared peers under a question
    shared = shared_prefix_hidden(model, ids, mask, pos, response_mask)
    assert shared is not None and shared.shape == plain.shape == (int(response_mask.sum()), model.config.hidden_size)
    torch.testing.assert_close(shared, plain, rtol=0, atol=tol)
    # and the model is left as it was (its head restored)
    assert forward.output_head(model)[1] is model.get_output_embeddings()


def test_one_segment_per_forward_gives_the_same_hidden_states(monkeypatch):
    """Under a small K/V budget every forward runs one segment (each row with its own copy of its parent's
    keys/values); the output is the same, in the same row-major order."""
    model = _model(torch.float64)
    prompts = _prompts(seed=5)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [3, 2, 5, 1, 4, 5, 2, 3], response_width=5, seed=5)
    whole = shared_prefix_hidden(model, ids, mask, pos, response_mask)
    monkeypatch.setitem(prefix_plan._CACHE_BYTES, "cpu", 1)
    batch_plan = prefix_plan.plan(model, ids, mask, response_mask)
    assert all(len(c) == 1 for chunks in batch_plan.depths for c in chunks)
    assert all(len(c) == 1 for c in batch_plan.row_chunks)
    torch.testing.assert_close(
        shared_prefix_hidden(model, ids, mask, pos, response_mask, batch_plan), whole, rtol=0, atol=1e-10
    )


def test_shared_prefix_hidden_with_eager_attention():
    model, reference = _model(torch.float32, "eager"), _model(torch.float32)
    prompts = _prompts(seed=3)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2, 4, 4, 1, 3, 4, 4, 2], response_width=4, seed=3)
    torch.testing.assert_close(
        shared_prefix_hidden(model, ids, mask, pos, response_mask),
        forward.response_hidden(reference, ids, mask, pos, response_mask),
        rtol=0,
        atol=2e-5,
    )


def test_a_one_token_prompt_runs_whole_beside_shared_ones():
    model = _model(torch.float64)
    prompts = _prompts(seed=4)[:4] + [[5]]
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2, 2, 1, 2, 2], response_width=2, seed=4)
    batch_plan = prefix_plan.plan(model, ids, mask, response_mask)
    assert batch_plan is not None and batch_plan.tree.row_parent[4] == -1
    torch.testing.assert_close(
        shared_prefix_hidden(model, ids, mask, pos, response_mask),
        forward.response_hidden(model, ids, mask, pos, response_mask),
        rtol=0,
        atol=1e-10,
    )


def test_little_to_share_falls_back_to_the_plain_forward():
    model = _model(torch.float64)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 264, (20,), generator=g).tolist() for _ in range(4)]
    prompts[1][:2] = prompts[0][:2]  # 2 shared tokens of 84: not worth a second call
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2] * 4, response_width=2)
    assert shared_prefix_hidden(model, ids, mask, pos, response_mask) is None


@pytest.mark.parametrize("attn,tol", [("sdpa", 1e-10), ("eager", 2e-5)])  # eager: a float32 softmax
def test_siblings_packed_into_one_forward_row_give_the_same_hidden_states(attn, tol, monkeypatch):
    """Rows under one parent with short tails share a forward row under a 4D mask (each sees the parent and
    itself, not its siblings); the result equals the plain forward and the one-row-per-row pass."""
    model, reference = _model(torch.float64, attn), _model(torch.float64)  # (eager's own plain forward: NaN
    prompts = _group_prompts(0)  # at left padding in float64)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [5, 1, 7, 3, 7, 0, 6, 2], response_width=7)
    batch_plan = prefix_plan.plan(model, ids, mask, response_mask)
    segment = [
        (
            batch_plan.starts[r] + batch_plan.tree.prefix(batch_plan.tree.row_parent[r]),
            ids.shape[1] - 7 + batch_plan.scored[r],
        )
        for r in range(len(prompts))
    ]
    packs = [p for c in batch_plan.row_chunks for p in shared_prefix._sibling_packs(batch_plan.tree, c, segment, True)]
    assert any(len(p) > 1 for p in packs)
    packed = shared_prefix_hidden(model, ids, mask, pos, response_mask, batch_plan)
    torch.testing.assert_close(
        packed, forward.response_hidden(reference, ids, mask, pos, response_mask), rtol=0, atol=tol
    )
    monkeypatch.setattr(shared_prefix, "_takes_4d_masks", lambda module: False)  # as under flash-attention
    torch.testing.assert_close(
        shared_prefix_hidden(model, ids, mask, pos, response_mask, batch_plan), packed, rtol=0, atol=tol
    )


def test_sibling_packs_keep_long_tails_and_orphans_apart():
    tree = prefix_plan.Tree(length=[100], row=[0], parent=[-1], row_parent=[0, 0, 0, -1, 0])
    segment = [(0, 4), (0, 5), (0, 30), (0, 3), (0, 2)]
    # rows 0, 1, 4 under the node: 11 columns, within a quarter of its 100; row 3 has no parent
    assert shared_prefix._sibling_packs(tree, [0, 1, 3, 4], segment, True) == [[0, 1, 4], [3]]
    # with row 2 the siblings hold 41 columns: more than a quarter, each runs alone
    assert shared_prefix._sibling_packs(tree, [0, 1, 2, 3, 4], segment, True) == [[0], [1], [2], [4], [3]]
    assert shared_prefix._sibling_packs(tree, [0, 1, 3, 4], segment, False) == [[0], [1], [3], [4]]


def test_the_student_path_refuses_gradient_checkpointing_and_the_worker_says_when_it_is_off(capsys):
    """Transformers drops the KV cache under gradient checkpointing, so the shared path with gradients
    would let rollouts miss their prompt: it refuses, and the worker turns actor.shared_prefix off (with a
    line naming the reason) there and on several ranks."""
    from workers.fsdp_worker import _student_shares_prefixes

    model = _model(torch.float32)
    batch = _teacher_batch(_group_prompts(0), [5, 1, 7, 3, 7, 2, 6, 4], response_width=7)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        shared_prefix.shared_prefix_head(model, *batch, lambda hidden, weight, where: hidden)
    with torch.no_grad():  # no backward to replay: transformers keeps the cache, the no-grad pass shares
        shared = shared_prefix.shared_prefix_head(model, *batch, lambda hidden, weight, where: hidden)
        torch.testing.assert_close(shared, forward.response_hidden(model, *batch), rtol=2e-5, atol=2e-5)

    assert _student_shares_prefixes(True, 1, False, 0) is True and capsys.readouterr().out == ""
    assert _student_shares_prefixes(False, 2, True, 0) is False and capsys.readouterr().out == ""
    assert _student_shares_prefixes(True, 2, False, 0) is False
    assert "actor_rollout_ref.actor.shared_prefix" in capsys.readouterr().out
    assert _student_shares_prefixes(True, 1, True, 0) is False
    assert "enable_gradient_checkpointing" in capsys.readouterr().out
    assert _student_shares_prefixes(True, 2, False, 1) is False and capsys.readouterr().out == ""  # rank 0 says it


def test_tokens_run_counts_each_shared_prefix_once(monkeypatch):
    """``response_head(..., tokens_run=)`` (what MFU counts): the plain forward runs every valid token; the
    shared one each distinct prompt prefix once plus each row's response up to its last scored token's
    predecessor. For the two groups of _group_prompts: the template (6), per group the question (9), the
    first peer (20) under three rows, the second peer (21) under two, then 22 + 21 + 22 more peer tokens and
    the rows' 2-token tails, and responses of lengths 5 1 7 3 7 2 6 4 (run: 4 0 6 2 6 1 5 3)."""
    monkeypatch.setattr(prefix_plan, "_NODE_TOKENS", 0)  # every shared prefix a node, however short,
    monkeypatch.setattr(prefix_plan, "_MAX_DEPTH", 10)  # and at any depth
    model = _model(torch.float32)
    ids, mask, pos, response_mask = _teacher_batch(_group_prompts(0), [5, 1, 7, 3, 7, 2, 6, 4], response_width=7)
    fn = lambda hidden, weight, where=None: hidden[:, :1]  # noqa: E731
    shared, plain = [], []
    with torch.no_grad():
        shared_prefix.response_head(model, ids, mask, pos, response_mask, fn, tokens_run=shared)
        shared_prefix.response_head(model, ids, mask, pos, response_mask, fn, share=False, tokens_run=plain)
    assert plain == [int(mask.sum())]
    assert shared == [6 + 2 * (9 + 20 + 21 + 22 + 21 + 22 + 4 * 2) + (4 + 0 + 6 + 2 + 6 + 1 + 5 + 3)]


def test_identical_rows_run_once_and_each_gets_its_hidden_states(monkeypatch):
    """A row with the same prompt and the same response columns up to its last scored token as an earlier
    row takes that row's hidden states instead of running; a row that differs in any of them runs."""
    monkeypatch.setattr(prefix_plan, "_NODE_TOKENS", 0)
    model = _model(torch.float64)
    prompts = _group_prompts(0)[:4]
    prompts = [prompts[0]] * 7 + prompts[1:]
    ids, mask, pos, response_mask = _teacher_batch(prompts, [4, 4, 4, 4, 3, 5, 4, 2, 3, 4], response_width=6)
    width = ids.shape[1] - 6
    ids[1, width:] = ids[0, width:]  # row 1: row 0 exactly
    ids[2, width:] = ids[0, width:]
    ids[2, width + 3] = ids[0, width + 3] % 250 + 3  # row 2: row 0 but its last token (not an input)
    ids[3, width:] = ids[0, width:]
    ids[3, width + 1] = ids[0, width + 1] % 250 + 3  # row 3: differs inside its response: runs
    ids[4, width : width + 3] = ids[0, width : width + 3]  # row 4: row 0 one token shorter: runs
    ids[5, width : width + 4] = ids[0, width : width + 4]  # row 5: row 0 one token longer: runs
    ids[6, width:] = ids[0, width:]
    response_mask[6, 1] = 0  # row 6: row 0's inputs, one token not scored (a masked tool output, say)
    batch_plan = prefix_plan.plan(model, ids, mask, response_mask)
    assert batch_plan.same_as == [0, 0, 0, 3, 4, 5, 0, 7, 8, 9]
    assert not any(r in chunk for chunk in batch_plan.row_chunks for r in (1, 2, 6))
    _, tokens = prefix_plan.shared_tokens(ids, mask, response_mask)
    assert tokens == batch_plan.tokens
    shared = shared_prefix_hidden(model, ids, mask, pos, response_mask, batch_plan)
    torch.testing.assert_close(
        shared, forward.response_hidden(model, ids, mask, pos, response_mask), rtol=0, atol=1e-10
    )
    # each copy's labels are its own: a head that reads them per position sees row 2's last token
    labels = ids[:, width:][response_mask.bool()]

    def fn(hidden, weight, where=None):
        return (
            (hidden @ weight.T).log_softmax(-1).gather(-1, (labels if where is None else labels[where]).unsqueeze(-1))
        )

    torch.testing.assert_close(
        shared_prefix.response_head(model, ids, mask, pos, response_mask, fn),
        shared_prefix.response_head(model, ids, mask, pos, response_mask, fn, share=False),
        rtol=0,
        atol=1e-10,
    )
