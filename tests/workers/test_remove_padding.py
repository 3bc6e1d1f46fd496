"""workers.forward with ``remove_padding``: packed rows give the padded rows' logits, student and teacher,
under sdpa and eager (transformers' block-diagonal mask) and ``packed_attention.PACKED_SDPA`` (attention per
sequence from the boundaries, no mask).

Tolerances: float64 1e-10 (only summation order differs); float32 2e-5 absolute on logits of size ~10.
"""

from __future__ import annotations

import pytest
import torch

from workers import forward, model_utils, packed_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(dtype, attn="sdpa"):
    """``attn="packed"``: loaded as the worker loads a model for packing under sdpa."""
    path = model_utils.resolve_model_path("embedded")
    if attn == "packed":
        attn = packed_attention.implementation("sdpa", remove_padding=True)
    return model_utils.load_causal_lm(path, dtype=dtype, attn_implementation=attn)


def _batch(prompt_lengths, response_lengths, prompt_width, response_width, seed=0, vocab=264):
    g = torch.Generator().manual_seed(seed)
    b = len(prompt_lengths)
    prompt = torch.zeros(b, prompt_width, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt)
    for i, n in enumerate(prompt_lengths):
        prompt[i, prompt_width - n :] = torch.randint(3, vocab, (n,), generator=g)
        prompt_mask[i, prompt_width - n :] = 1
    response_mask = (torch.arange(response_width) < torch.tensor(response_lengths).unsqueeze(1)).long()
    responses = torch.randint(3, vocab, (b, response_width), generator=g) * response_mask
    mask = torch.cat([prompt_mask, response_mask], 1)
    return torch.cat([prompt, responses], 1), mask, (mask.cumsum(1) - 1).clamp(min=0), responses, response_mask


def _logits(model, batch, remove_padding):
    ids, mask, pos, _, response_mask = batch
    return forward.response_head(model, ids, mask, pos, response_mask, lambda h, w: h @ w.t(), remove_padding)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("attn", ["sdpa", "eager", "packed"])
def test_packed_logits_equal_padded_logits(dtype, tol, attn):
    """The reference is sdpa on padded rows (eager on left-padded float64 rows gives NaN: fully masked
    padding queries; packing has no padding at all). transformers' eager softmax runs in float32, hence
    its float32 tolerance."""
    model, reference = _model(dtype, attn), _model(dtype, "sdpa")
    tol = tol if attn == "sdpa" else 2e-5
    student = _batch([3, 7, 1, 5], [4, 1, 6, 2], prompt_width=7, response_width=6)
    teacher = _batch([12, 20, 9, 15], [4, 1, 6, 2], prompt_width=20, response_width=6, seed=1)  # longer prompts
    for batch in (student, teacher):
        padded, packed = _logits(reference, batch, False), _logits(model, batch, True)
        assert packed.shape == padded.shape == (int(batch[4].sum()), model.config.vocab_size)
        torch.testing.assert_close(packed, padded, rtol=0, atol=tol)


def test_packing_needs_no_mask_and_no_cache():
    """Why attention_mask=None and use_cache=False: transformers looks for position-id resets only then;
    an all-ones mask, or the default cache, silently lets the second sequence attend to the first."""
    model = _model(torch.float64)
    ids, mask, pos, _, _ = _batch([3, 4], [2, 3], prompt_width=4, response_width=3)
    keep = mask.bool()
    packed_ids, packed_pos = ids[keep].unsqueeze(0), pos[keep].unsqueeze(0)
    first = int(keep[0].sum())
    alone = model(
        input_ids=ids[1][keep[1]].unsqueeze(0), position_ids=pos[1][keep[1]].unsqueeze(0), use_cache=False
    ).logits
    separate = model(input_ids=packed_ids, position_ids=packed_pos, attention_mask=None, use_cache=False).logits
    torch.testing.assert_close(separate[:, first:], alone, rtol=0, atol=1e-10)
    for leaky in (dict(attention_mask=torch.ones_like(packed_ids), use_cache=False), dict(attention_mask=None)):
        out = model(input_ids=packed_ids, position_ids=packed_pos, **leaky).logits
        assert (out[:, first:] - alone).abs().max() > 1e-3, leaky


@pytest.mark.parametrize("attn,checkpointing", [("sdpa", False), ("packed", False), ("packed", True)])
def test_packed_log_probs_and_gradients_equal_padded(attn, checkpointing):
    """With gradient checkpointing, backward recomputes the layers after the packed forward has returned:
    the recomputed attention must still be per sequence (it is: the boundaries travel with the layers'
    arguments), or the gradients would differ."""
    model = _model(torch.float64, attn)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    ids, mask, pos, responses, response_mask = _batch([3, 7, 1], [4, 1, 6], prompt_width=7, response_width=6)
    results = []
    for remove_padding in (False, True):
        model.zero_grad(set_to_none=True)
        labels = responses[response_mask.bool()]

        def fn(hidden, weight):
            from mopd.core.fused_head import fused_head

            return fused_head(hidden, weight, labels, temperature=0.8)[0].unsqueeze(-1)

        values = forward.response_head(model, ids, mask, pos, response_mask, fn, remove_padding)
        values.sum().backward()
        results.append((values.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for x, y in zip(grads_a, grads_b):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_padded_path_drops_all_padding_columns_exactly():
    """Without packing, columns that are padding in every row are dropped: same logits as the full rows."""
    model = _model(torch.float64)
    ids, mask, pos, _, response_mask = _batch([3, 6, 2], [4, 1, 5], prompt_width=10, response_width=8)
    got = forward.response_head(model, ids, mask, pos, response_mask, lambda h, w: h @ w.t())
    full = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    want = full[:, -9:-1][response_mask.bool()]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_packed_sdpa_attends_per_sequence_without_a_mask(monkeypatch):
    """PACKED_SDPA's packed forward builds no [T, T] mask and no attention call spans two sequences; the
    padded forward of the same model is plain sdpa with sdpa's mask."""
    import transformers.masking_utils as masking_utils

    model = _model(torch.float32, "packed")
    calls = {"mask": 0, "widths": []}
    real_mask, real_sdpa = masking_utils.sdpa_mask, packed_attention.F.scaled_dot_product_attention

    def counting_mask(*args, **kwargs):
        calls["mask"] += 1
        return real_mask(*args, **kwargs)

    def recording_sdpa(query, key, value, *args, **kwargs):
        calls["widths"].append(key.shape[2])
        return real_sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(masking_utils, "sdpa_mask", counting_mask)
    monkeypatch.setattr(packed_attention.F, "scaled_dot_product_attention", recording_sdpa)
    ids, mask, pos, _, response_mask = _batch([3, 7, 1, 5], [4, 1, 6, 2], prompt_width=7, response_width=6)
    _logits(model, (ids, mask, pos, None, response_mask), True)
    lengths = mask.sum(1).tolist()
    assert calls["mask"] == 0
    assert calls["widths"] == lengths * model.config.num_hidden_layers
    _logits(model, (ids, mask, pos, None, response_mask), False)
    layers = model.config.num_hidden_layers
    assert calls["mask"] == 1 and calls["widths"][len(lengths) * layers :] == [ids.shape[1]] * layers  # one row each


def test_packed_sdpa_refuses_a_packed_forward_without_boundaries():
    model = _model(torch.float32, "packed")
    with packed_attention.packed(), pytest.raises(RuntimeError, match="without its sequence boundaries"):
        model(
            input_ids=torch.tensor([[5, 6, 7, 5, 6]]),
            position_ids=torch.tensor([[0, 1, 2, 0, 1]]),
            attention_mask=None,
            use_cache=False,
        )


def test_packing_choice_of_attention():
    assert packed_attention.implementation("sdpa", remove_padding=True) == packed_attention.PACKED_SDPA
    for attn in ("eager", "flash_attention_2"):
        assert packed_attention.implementation(attn, remove_padding=True) == attn
    assert packed_attention.implementation("sdpa", remove_padding=False) == "sdpa"


def _kernel_from_sdpa(causal: bool):
    """A varlen kernel ``(q, k, v [T, H, D], bounds, longest, scale, groups)`` built from sdpa per sequence."""

    def run(q, k, v, bounds, longest, scale, groups):
        edges = bounds.tolist()
        pieces = [
            torch.nn.functional.scaled_dot_product_attention(
                *(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=causal, scale=scale, enable_gqa=groups > 1
            )
            for a, b in zip(edges[:-1], edges[1:])
        ]
        return torch.cat(pieces, 1).transpose(0, 1)

    return run


def test_the_varlen_kernel_is_checked_before_use(capsys):
    """On CUDA the varlen kernel runs only after a small forward/backward agreed with sdpa per sequence
    (checked once per device and dtype); one line says why it is not used otherwise."""
    assert packed_attention.varlen_agrees("cpu", torch.float32, kernel=_kernel_from_sdpa(causal=True))
    assert capsys.readouterr().out == ""
    assert not packed_attention.varlen_agrees("cpu", torch.float32, kernel=_kernel_from_sdpa(causal=False))
    assert "disagrees with sdpa" in capsys.readouterr().out

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    assert not packed_attention.varlen_agrees("cpu", torch.float32, kernel=broken)
    assert "failed its check on cpu (RuntimeError: no kernel image" in capsys.readouterr().out
    assert not packed_attention._varlen_usable(torch.zeros(1, 4, 3, 64, dtype=torch.bfloat16))  # CPU: never
