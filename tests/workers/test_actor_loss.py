"""workers.actor: the loss path of one mini-batch, on the shipped embedded base model in float64.

The mini-batch loss and its gradient must not depend on how the mini-batch is cut into micro-batches
(torchtune-style check: one micro-batch against several), for every ``loss_mode`` and with the entropy
bonus; and the sum of the micro-batch shares must equal the plain mean over the whole mini-batch.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mopd.config import SelfDistillationConfig
from workers import model_utils
from workers.actor import Normalizers, TeacherForward, backward_mini_batch, loss_normalizer_counts
from workers.batch import index_batch, slice_batch

N = 3  # rollouts per prompt
PROMPTS = 4
PROMPT_WIDTH, TEACHER_WIDTH, RESPONSE_WIDTH = 6, 11, 5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny float64 kernels: threads only contend (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    path = model_utils.resolve_model_path("embedded")
    student = model_utils.load_causal_lm(path, dtype=torch.float64, attn_implementation="sdpa")
    torch.manual_seed(1)
    other = copy.deepcopy(student)
    with torch.no_grad():  # a teacher / reference that disagrees with the student
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.requires_grad_(False)
    return student, other


def _left_padded(lengths, width, generator, vocab):
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(3, vocab, (n,), generator=generator)
        mask[i, width - n:] = 1
    return ids, mask


def make_mini_batch(vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = PROMPTS * N
    prompt, prompt_mask = _left_padded(torch.randint(2, PROMPT_WIDTH + 1, (PROMPTS,), generator=g).repeat_interleave(N).tolist(),
                                       PROMPT_WIDTH, g, vocab)
    response_lengths = torch.randint(1, RESPONSE_WIDTH + 1, (b,), generator=g)
    response_mask = (torch.arange(RESPONSE_WIDTH) < response_lengths.unsqueeze(1)).long()
    responses = torch.randint(3, vocab, (b, RESPONSE_WIDTH), generator=g) * response_mask
    teacher, teacher_mask = _left_padded(torch.randint(3, TEACHER_WIDTH + 1, (b,), generator=g).tolist(),
                                         TEACHER_WIDTH, g, vocab)
    attention_mask = torch.cat([prompt_mask, response_mask], 1)
    teacher_attention = torch.cat([teacher_mask, response_mask], 1)
    # Scores: mixed groups (pairs), one all-failed group (no pairs), one all-successful group.
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5])
    return {
        "input_ids": torch.cat([prompt, responses], 1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
        "responses": responses,
        "response_mask": response_mask,
        "teacher_input_ids": torch.cat([teacher, responses], 1),
        "teacher_attention_mask": teacher_attention,
        "teacher_position_ids": (teacher_attention.cumsum(1) - 1).clamp(min=0),
        "distillation_mask": torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool),
        "advantages": torch.randn(b, 1, generator=g).expand(b, RESPONSE_WIDTH).contiguous(),
        "scores": scores,
        "uid": [f"p{i // N}" for i in range(b)],
        "meta": {"step": 0, "temperature": 0.9},
    }


def actor_cfg(loss_mode: str, agg_mode: str = "token-mean") -> dict:
    return {
        "loss_agg_mode": agg_mode, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0,
        "policy_loss": {"loss_mode": loss_mode, "dpo_beta": 0.1, "simpo_beta": 2.0, "simpo_gamma": 0.5,
                        "pref_label_smoothing": 0.1, "sft_success_threshold": 1.0, "sft_length_normalize": True},
    }


# (loss_mode, loss_agg_mode, self-distillation overrides, with pi_old, entropy_coeff)
CASES = [
    ("mopd", "token-mean", {}, True, 0.0),
    ("mopd", "token-mean", {}, True, 0.05),
    ("mopd", "seq-mean-token-mean", {"alpha": 0.0, "distillation_add_tail": False}, False, 0.0),
    ("mopd", "seq-mean-token-sum-norm", {"alpha": 1.0, "teacher_regularization": "trust-region"}, True, 0.05),
    ("sdpo", "token-mean", {"alpha": 1.0, "full_logit_distillation": False}, True, 0.0),
    ("sdpo", "seq-mean-token-sum", {"distillation_topk": None}, False, 0.05),
    ("grpo", "token-mean", None, True, 0.0),
    ("grpo", "token-mean", None, True, 0.05),
    ("vanilla", "seq-mean-token-sum", None, True, 0.05),
    ("dpo", "token-mean", None, False, 0.0),
    ("dpo", "token-mean", None, False, 0.05),
    ("simpo", "token-mean", None, False, 0.0),
    ("simpo", "token-mean", None, False, 0.05),
    ("verified_sft", "token-mean", None, False, 0.0),
    ("verified_sft", "token-mean", None, False, 0.05),
]


def _loss_kwargs(case, models, batch):
    loss_mode, agg_mode, sd_overrides, with_old, entropy_coeff = case
    student, other = models
    sd_cfg = teacher = None
    if sd_overrides is not None:
        sd_cfg = SelfDistillationConfig.from_dict(sd_overrides)
        teacher = TeacherForward(other, sd_cfg.teacher_regularization, 0.3, student)
    if with_old:
        g = torch.Generator().manual_seed(5)
        batch["old_log_probs"] = -2.0 + 0.5 * torch.randn(batch["responses"].shape, generator=g, dtype=torch.float64)
    return dict(loss_mode=loss_mode, actor_cfg=actor_cfg(loss_mode, agg_mode), sd_cfg=sd_cfg, teacher=teacher,
                ref_module=other, temperature=batch["meta"]["temperature"], horizon=RESPONSE_WIDTH + 2,
                entropy_coeff=entropy_coeff)


def _run(student, micro_batches, normalizers, kwargs):
    student.zero_grad(set_to_none=True)
    loss, metrics = backward_mini_batch(micro_batches, student, normalizers, torch.device("cpu"), **kwargs)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in student.parameters()]
    return loss, grads, metrics


def _cut(batch: dict, sizes: list[int]) -> list[dict]:
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    assert bounds[-1] == PROMPTS * N
    return [slice_batch(batch, a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-entropy{c[4]}")
def test_mini_batch_loss_and_gradient_do_not_depend_on_micro_batching(models, case):
    student = models[0]
    batch = make_mini_batch(student.config.vocab_size)
    kwargs = _loss_kwargs(case, models, batch)
    counts = loss_normalizer_counts(batch, case[0], kwargs["actor_cfg"])
    normalizers = Normalizers(*(max(c, 1.0) for c in counts))
    # The independent reference: the whole mini-batch as one micro-batch with its own local means.
    ref_loss, ref_grads, _ = _run(student, [batch], None, kwargs)
    assert ref_loss != 0.0 and any(g.abs().sum() > 0 for g in ref_grads)
    pairwise = case[0] in ("dpo", "simpo")
    splits = [[3, 3, 6], [3, 9]] if pairwise else [[1, 2, 4, 5], [7, 5]]
    for sizes in splits:
        loss, grads, _ = _run(student, _cut(batch, sizes), normalizers, kwargs)
        assert loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12), sizes
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12, msg=lambda m: f"micro-batches {sizes}: {m}")


def test_without_global_normalisation_each_micro_batch_is_a_mean(models):
    """global_token_normalization=false keeps the per-micro-batch means, averaged (the old rule)."""
    student = models[0]
    batch = make_mini_batch(student.config.vocab_size)
    kwargs = _loss_kwargs(("dpo", "token-mean", None, False, 0.0), models, batch)
    parts = _cut(batch, [3, 9])
    loss, _, _ = _run(student, parts, None, kwargs)
    separately = [_run(student, [p], None, kwargs)[0] for p in parts]
    assert loss == pytest.approx(sum(separately) / 2, rel=1e-12)


def test_preference_modes_refuse_a_prompt_split_over_micro_batches(models):
    student = models[0]
    batch = make_mini_batch(student.config.vocab_size)
    kwargs = _loss_kwargs(("simpo", "token-mean", None, False, 0.0), models, batch)
    with pytest.raises(ValueError, match="uid='p1' is split over micro-batches 0 and 1"):
        _run(student, _cut(batch, [4, 8]), None, kwargs)


def test_group_shuffle_keeps_each_prompts_rollouts_together():
    from workers.fsdp_worker import _shuffled

    order = _shuffled(PROMPTS * N, N, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(PROMPTS * N))
    assert order.tolist() != list(range(PROMPTS * N))
    batch = index_batch(make_mini_batch(264), order)
    groups = [batch["uid"][i:i + N] for i in range(0, PROMPTS * N, N)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == PROMPTS
