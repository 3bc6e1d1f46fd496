"""workers.actor: the loss path of one mini-batch, on the shipped embedded base model in float64.

The mini-batch loss and its gradient must not depend on how the mini-batch is cut into micro-batches
(torchtune-style check: one micro-batch against several), for every ``loss_mode`` and with the entropy
bonus; and the sum of the micro-batch shares must equal the plain mean over the whole mini-batch.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from mopd.core.config import SelfDistillationConfig
from workers import model_utils
from workers.actor import Normalizers, TeacherForward, backward_mini_batch, loss_normalizer_counts
from workers.batch import index_batch, slice_batch
from workers.config import ActorConfig
from workers.rollout_batch import RolloutBatch, SamplingParams, StepMeta

N = 3  # rollouts per prompt
PROMPTS = 4
PROMPT_WIDTH, TEACHER_WIDTH, RESPONSE_WIDTH = 6, 11, 5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    return _load_models()


def _left_padded(lengths, width, generator, vocab):
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = torch.randint(3, vocab, (n,), generator=generator)
        mask[i, width - n :] = 1
    return ids, mask


def make_mini_batch(vocab: int, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    b = PROMPTS * N
    prompt, prompt_mask = _left_padded(
        torch.randint(2, PROMPT_WIDTH + 1, (PROMPTS,), generator=g).repeat_interleave(N).tolist(),
        PROMPT_WIDTH,
        g,
        vocab,
    )
    response_lengths = torch.randint(1, RESPONSE_WIDTH + 1, (b,), generator=g)
    response_mask = (torch.arange(RESPONSE_WIDTH) < response_lengths.unsqueeze(1)).long()
    responses = torch.randint(3, vocab, (b, RESPONSE_WIDTH), generator=g) * response_mask
    teacher, teacher_mask = _left_padded(
        torch.randint(3, TEACHER_WIDTH + 1, (b,), generator=g).tolist(), TEACHER_WIDTH, g, vocab
    )
    attention_mask = torch.cat([prompt_mask, response_mask], 1)
    teacher_attention = torch.cat([teacher_mask, response_mask], 1)
    # Scores: mixed groups (pairs), one all-failed group (no pairs), one all-successful group.
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5])
    return RolloutBatch(
        input_ids=torch.cat([prompt, responses], 1),
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(1) - 1).clamp(min=0),
        responses=responses,
        response_mask=response_mask,
        teacher_input_ids=torch.cat([teacher, responses], 1),
        teacher_attention_mask=teacher_attention,
        teacher_position_ids=(teacher_attention.cumsum(1) - 1).clamp(min=0),
        distillation_mask=torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool),
        advantages=torch.randn(b, 1, generator=g).expand(b, RESPONSE_WIDTH).contiguous(),
        scores=scores,
        uid=[f"p{i // N}" for i in range(b)],
        meta=StepMeta(step=0, sampling=SamplingParams(temperature=0.9)),
    )


def actor_cfg(loss_mode: str, agg_mode: str = "token-mean", kl_loss_type: str | None = None) -> ActorConfig:
    return ActorConfig.from_dict(
        {
            "use_kl_loss": kl_loss_type is not None,
            "kl_loss_coef": 0.5,
            "kl_loss_type": kl_loss_type or "low_var_kl",
            "loss_agg_mode": agg_mode,
            "clip_ratio_low": 0.2,
            "clip_ratio_high": 0.28,
            "clip_ratio_c": 3.0,
            "policy_loss": {
                "loss_mode": loss_mode,
                "dpo_beta": 0.1,
                "simpo_beta": 2.0,
                "simpo_gamma": 0.5,
                "pref_label_smoothing": 0.1,
                "sft_success_threshold": 1.0,
                "sft_length_normalize": True,
            },
        }
    )


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


def _loss_kwargs(case, models, batch, remove_padding=False):
    loss_mode, agg_mode, sd_overrides, with_old, entropy_coeff = case
    student, other = models
    sd_cfg = teacher = None
    if sd_overrides is not None:
        sd_cfg = SelfDistillationConfig.from_dict(sd_overrides)
        teacher = TeacherForward(other, sd_cfg.teacher_regularization, 0.3, student, remove_padding)
    if with_old:
        g = torch.Generator().manual_seed(5)
        batch.old_log_probs = -2.0 + 0.5 * torch.randn(batch.responses.shape, generator=g, dtype=torch.float64)
    return dict(
        loss_mode=loss_mode,
        actor_cfg=actor_cfg(loss_mode, agg_mode),
        sd_cfg=sd_cfg,
        teacher=teacher,
        ref_module=other,
        temperature=batch.meta.temperature,
        horizon=RESPONSE_WIDTH + 2,
        entropy_coeff=entropy_coeff,
        remove_padding=remove_padding,
    )


def _run(student, micro_batches, normalizers, kwargs):
    student.zero_grad(set_to_none=True)
    loss, metrics = backward_mini_batch(micro_batches, student, normalizers, torch.device("cpu"), **kwargs)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in student.parameters()]
    return loss, grads, metrics


def _cut(batch: RolloutBatch, sizes: list[int]) -> list[RolloutBatch]:
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


@pytest.mark.parametrize(
    "kind,agg_mode", [("low_var_kl", "token-mean"), ("mse", "seq-mean-token-mean"), ("kl", "token-mean")]
)
def test_kl_loss_adds_coef_times_the_direct_kl_and_does_not_depend_on_micro_batching(models, kind, agg_mode):
    """actor.use_kl_loss: the loss grows by kl_loss_coef x agg(kl_penalty(pi_theta, pi_ref)), the policy's
    log-probs taken from a plain [B, R, V] forward (independent of the fused head), in float64; and the
    micro-batched loss and gradient equal the whole mini-batch's."""
    from mopd.core import losses
    from mopd.core.kl import kl_penalty

    student = models[0]
    batch = make_mini_batch(student.config.vocab_size)
    g = torch.Generator().manual_seed(11)
    batch.ref_log_probs = -3.0 + torch.randn(batch.responses.shape, generator=g, dtype=torch.float64)
    case = ("grpo", agg_mode, None, True, 0.0)
    plain_kwargs = _loss_kwargs(case, models, batch)
    kl_kwargs = dict(plain_kwargs, actor_cfg=actor_cfg("grpo", agg_mode, kind))
    without, _, _ = _run(student, [batch], None, plain_kwargs)
    with_kl, ref_grads, metrics = _run(student, [batch], None, kl_kwargs)
    with torch.no_grad():
        logits = _plain_logits(
            student,
            batch.input_ids,
            batch.attention_mask,
            batch.position_ids,
            RESPONSE_WIDTH,
            batch.meta.temperature,
        ).double()
        log_probs = torch.log_softmax(logits, -1).gather(-1, batch.responses.unsqueeze(-1)).squeeze(-1)
        mask = batch.response_mask.double()
        direct = losses.agg_loss(kl_penalty(log_probs, batch.ref_log_probs, kind), mask, agg_mode)
    assert with_kl - without == pytest.approx(0.5 * direct.item(), rel=1e-6, abs=1e-9)
    assert metrics["actor/kl_coef"] == [0.5] and metrics["actor/kl_loss"][0] != 0.0
    counts = loss_normalizer_counts(batch, "grpo", kl_kwargs["actor_cfg"])
    normalizers = Normalizers(*(max(c, 1.0) for c in counts))
    loss, grads, _ = _run(student, _cut(batch, [1, 2, 4, 5]), normalizers, kl_kwargs)
    assert loss == pytest.approx(with_kl, rel=1e-9, abs=1e-12)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-8, atol=1e-12)


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
    from workers.seeding import shuffled_groups

    order = shuffled_groups(PROMPTS * N, N, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(PROMPTS * N))
    assert order.tolist() != list(range(PROMPTS * N))
    batch = index_batch(make_mini_batch(264), order)
    groups = [batch.uid[i : i + N] for i in range(0, PROMPTS * N, N)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == PROMPTS


def _plain_logits(module, ids, mask, pos, width, temperature):
    out = module(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=width + 1, use_cache=False)
    return out.logits[:, :-1] / temperature


def plain_loss(case, models, batch, kwargs):
    """The independent reference: [B, R, V] logits from the model's own head, then mopd.core.losses."""
    from mopd.core import losses, sequence_losses
    from mopd.core.teacher import trust_region_logits

    student, other = models
    loss_mode, agg_mode = case[0], case[1]
    cfg, t, width = kwargs["actor_cfg"], kwargs["temperature"], RESPONSE_WIDTH
    mask = batch.response_mask.double()
    logits = _plain_logits(student, batch.input_ids, batch.attention_mask, batch.position_ids, width, t)
    if loss_mode in ("mopd", "sdpo"):
        sd = kwargs["sd_cfg"]
        targs = (batch.teacher_input_ids, batch.teacher_attention_mask, batch.teacher_position_ids, width, t)
        with torch.no_grad():
            teacher_logits = _plain_logits(other, *targs)
            if sd.teacher_regularization == "trust-region":
                teacher_logits = trust_region_logits(teacher_logits, _plain_logits(student, *targs), 0.3)
        loss, _ = losses.self_distillation_loss(
            logits,
            teacher_logits,
            batch.responses,
            mask,
            batch.distillation_mask,
            sd,
            old_log_probs=batch.old_log_probs,
            loss_agg_mode=agg_mode,
            horizon=kwargs["horizon"],
        )
    elif loss_mode in ("grpo", "vanilla"):
        lp = losses.token_log_probs(logits, batch.responses)
        loss, _ = losses.ppo_policy_loss(
            lp, batch.old_log_probs, batch.advantages, mask, loss_agg_mode=agg_mode, horizon=kwargs["horizon"]
        )
    else:
        lp = losses.token_log_probs(logits, batch.responses)
        rewards, policy = batch.scores.tolist(), cfg["policy_loss"]
        seq = (lp * mask).sum(-1)
        if loss_mode == "verified_sft":
            loss, _ = sequence_losses.verified_sft_loss(lp, mask, rewards)
        elif loss_mode == "dpo":
            with torch.no_grad():
                ref = losses.token_log_probs(
                    _plain_logits(other, batch.input_ids, batch.attention_mask, batch.position_ids, width, t),
                    batch.responses,
                )
            loss, _ = sequence_losses.dpo_loss(
                seq,
                (ref * mask).sum(-1),
                batch.uid,
                rewards,
                beta=policy["dpo_beta"],
                label_smoothing=policy["pref_label_smoothing"],
            )
        else:
            loss, _ = sequence_losses.simpo_loss(
                seq,
                mask.sum(-1),
                batch.uid,
                rewards,
                beta=policy["simpo_beta"],
                gamma=policy["simpo_gamma"],
                label_smoothing=policy["pref_label_smoothing"],
            )
    if kwargs["entropy_coeff"]:
        log_p = torch.log_softmax(logits, dim=-1)
        loss = loss - kwargs["entropy_coeff"] * losses.agg_loss(-(log_p.exp() * log_p).sum(-1), mask, "token-mean")
    return loss


@pytest.mark.parametrize("remove_padding", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-entropy{c[4]}")
def test_fused_head_loss_equals_the_plain_logits_loss(models, case, remove_padding):
    """The actor's loss path (fused LM head, no [B, T, V] logits; packed rows or padded) against padded
    logits + mopd.core.losses."""
    student = models[0]
    batch = make_mini_batch(student.config.vocab_size)
    kwargs = _loss_kwargs(case, models, batch, remove_padding)
    loss, grads, _ = _run(student, [batch], None, kwargs)
    student.zero_grad(set_to_none=True)
    want = plain_loss(case, models, batch, kwargs)
    want_grads = torch.autograd.grad(want, list(student.parameters()), allow_unused=True)
    assert loss == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w if w is not None else torch.zeros_like(g), rtol=1e-8, atol=1e-11)


@pytest.fixture(scope="module")
def packed_models(models):
    """The models as the worker loads them for ``use_remove_padding`` under sdpa (``PACKED_SDPA``: attention
    per sequence), the student with gradient checkpointing (backward recomputes the packed attention)."""
    from workers import packed_attention

    student, other = (copy.deepcopy(m) for m in models)
    for m in (student, other):
        m.config._attn_implementation = packed_attention.implementation("sdpa", remove_padding=True)
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()
    return student, other


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-entropy{c[4]}")
def test_packed_sdpa_loss_equals_the_plain_logits_loss(models, packed_models, case):
    batch = make_mini_batch(models[0].config.vocab_size)
    loss, grads, _ = _run(packed_models[0], [batch], None, _loss_kwargs(case, packed_models, batch, True))
    models[0].zero_grad(set_to_none=True)
    want = plain_loss(case, models, batch, _loss_kwargs(case, models, batch))
    want_grads = torch.autograd.grad(want, list(models[0].parameters()), allow_unused=True)
    assert loss == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w if w is not None else torch.zeros_like(g), rtol=1e-8, atol=1e-11)


# --- the same under real FSDP2 (gloo), world size 1 and 2 ---------------------------------------------
FSDP_CASES = [CASES[1], CASES[3], CASES[7], CASES[10]]  # mopd (ema, trust-region), grpo, dpo; with entropy


def _fsdp_worker(rank: int, world: int, port: int, student_shared_prefix: bool = False) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    torch.set_num_threads(1)
    if student_shared_prefix:  # as the fixtures below do in the test process
        from transformers.models.qwen3 import modeling_qwen3

        import workers.prefix_plan as prefix_plan

        prefix_plan._NODE_TOKENS = 0
        modeling_qwen3.Qwen3RMSNorm.forward = _float64_norm
    try:
        plain_models = _load_models()
        for case in FSDP_CASES:
            batch = make_mini_batch(plain_models[0].config.vocab_size)
            if student_shared_prefix:
                batch = _with_shared_student_prompts(batch)
            ref_kwargs = _loss_kwargs(case, plain_models, batch)
            want = plain_loss(case, plain_models, batch, ref_kwargs)
            want_grads = torch.autograd.grad(want, list(plain_models[0].parameters()))
            student, other = (
                model_utils.fsdp2_wrap(
                    copy.deepcopy(m), torch.device("cpu"), world, torch.float32, shard_single_rank=True
                )
                for m in plain_models
            )
            kwargs = _loss_kwargs(case, (student, other), batch, remove_padding=not student_shared_prefix)
            kwargs["student_shared_prefix"] = student_shared_prefix
            counts = loss_normalizer_counts(batch, case[0], kwargs["actor_cfg"])
            normalizers = Normalizers(*(max(c, 1.0) / world for c in counts))
            per_rank = PROMPTS * N // world
            shard = slice_batch(batch, rank * per_rank, (rank + 1) * per_rank)
            loss, _ = backward_mini_batch([shard], student, normalizers, torch.device("cpu"), **kwargs)
            total = torch.tensor([loss], dtype=torch.float64)
            dist.all_reduce(total)
            # Each rank's share is scaled by the world size; their mean is the mini-batch loss.
            assert total.item() / world == pytest.approx(want.item(), rel=1e-9), (
                case,
                total.item() / world,
                want.item(),
            )
            for p, w in zip(student.parameters(), want_grads):
                torch.testing.assert_close(p.grad.full_tensor(), w, rtol=1e-8, atol=1e-11)
    finally:
        dist.destroy_process_group()


def _load_models():
    path = model_utils.resolve_model_path("embedded")
    student = model_utils.load_causal_lm(path, dtype=torch.float64, attn_implementation="sdpa")
    torch.manual_seed(1)
    other = copy.deepcopy(student)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.requires_grad_(False)
    return student, other


@pytest.mark.parametrize("world,student_shared_prefix", [(1, False), (2, False), (1, True)])
def test_fused_loss_under_fsdp2_equals_the_plain_loss(world, student_shared_prefix):
    """FSDP2 shards the embedding / LM head on the root module: the fused head must see the full weight
    (student through its own forward, teacher unsharded explicitly) and the gradients must match; also
    with the student's prompts shared (several forwards of the FSDP2 module before one backward)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(world, port, student_shared_prefix), nprocs=world, join=True)


# --- token-budget micro-batches (use_dynamic_bsz) -------------------------------------------------------
def test_token_budget_partition_respects_budget_groups_and_part_count():
    from workers.batch import token_budget_partition

    g = torch.Generator().manual_seed(0)
    lengths = [
        (int(s), int(s) + int(t))
        for s, t in zip(torch.randint(5, 40, (24,), generator=g), torch.randint(0, 60, (24,), generator=g))
    ]
    for group in (1, 3):
        parts = token_budget_partition(lengths, 150, group=group)
        assert sorted(i for p in parts for i in p) == list(range(24))
        for p in parts:
            assert all(sum(lengths[i][c] for i in p) <= 150 for c in (0, 1)) or len(p) == group
            assert all(len({i // group for i in p[k : k + group]}) == 1 for k in range(0, len(p), group))
        # the teacher column binds: fewer parts if only student lengths counted
        assert len(token_budget_partition([(s,) for s, _ in lengths], 150, group=group)) < len(parts)
        more = min(len(parts) + 2, 24 // group)
        spread = token_budget_partition(lengths, 150, group=group, parts=more)
        assert len(spread) == more and sorted(i for p in spread for i in p) == list(range(24))
    assert token_budget_partition([(500,), (3,)], 100) == [[0], [1]]  # too long: a micro-batch of its own
    with pytest.raises(ValueError, match="cannot spread 2 unit"):
        token_budget_partition([(5,), (3,)], 100, parts=3)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-entropy{c[4]}")
def test_token_budget_grouping_does_not_change_loss_or_gradient(models, case):
    """Non-contiguous groups chosen by token budget (student and teacher counted by their own lengths),
    packed rows: the same loss and gradient as the whole mini-batch in one plain micro-batch."""
    from workers.batch import sequence_lengths, token_budget_partition

    student = models[0]
    batch = make_mini_batch(student.config.vocab_size)
    kwargs = _loss_kwargs(case, models, batch, remove_padding=True)
    ref_loss, ref_grads, _ = _run(student, [batch], None, kwargs)
    counts = loss_normalizer_counts(batch, case[0], kwargs["actor_cfg"])
    normalizers = Normalizers(*(max(c, 1.0) for c in counts))
    group = N if case[0] in ("dpo", "simpo") else 1
    lengths = sequence_lengths(batch, "attention_mask", "teacher_attention_mask")
    parts = token_budget_partition(lengths, 40 if group == 1 else 60, group=group)
    assert len(parts) >= 2 and any(p != list(range(p[0], p[0] + len(p))) for p in parts)  # really regrouped
    loss, grads, _ = _run(student, [index_batch(batch, p) for p in parts], normalizers, kwargs)
    assert loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12)


def _with_shared_teacher_prefixes(batch: RolloutBatch) -> RolloutBatch:
    """The teacher prompts of a prompt's rollouts made to begin alike (as the question and peers make them):
    each member's first tokens copied from the group's first member, up to the shortest prompt less one."""
    ids, mask = batch.teacher_input_ids.clone(), batch.teacher_attention_mask
    width = TEACHER_WIDTH
    lengths = mask[:, :width].sum(-1)
    for first in range(0, PROMPTS * N, N):
        rows = range(first, first + N)
        k = int(lengths[first : first + N].min()) - 1
        for r in rows:
            ids[r, width - int(lengths[r]) : width - int(lengths[r]) + k] = ids[first, width - int(lengths[first]) :][
                :k
            ]
    return dataclasses.replace(batch, teacher_input_ids=ids)


def _record_shared_runs(monkeypatch) -> list:
    """The result of every shared-prefix teacher forward from now on (``None``: the plan chose the plain
    forward), with every prefix node kept: these short test prompts share only a few tokens."""
    import workers.prefix_plan as prefix_plan
    import workers.shared_prefix as shared_prefix

    monkeypatch.setattr(prefix_plan, "_NODE_TOKENS", 0)
    runs: list = []
    real = shared_prefix.shared_prefix_hidden
    monkeypatch.setattr(shared_prefix, "shared_prefix_hidden", lambda *a: runs.append(real(*a)) or runs[-1])
    return runs


@pytest.mark.parametrize("case", [c for c in CASES if c[2] is not None], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_shared_prefix_teacher_gives_the_plain_teachers_loss_and_gradient(models, case, monkeypatch):
    """actor_rollout_ref.ref.shared_prefix: the same mini-batch loss and gradient as the plain teacher
    forward, micro-batches aligned with the prompt groups or not (then each part shares what it holds)."""
    student = models[0]
    batch = _with_identical_responses(_with_shared_teacher_prefixes(make_mini_batch(student.config.vocab_size)))
    kwargs = _loss_kwargs(case, models, batch)
    ref_loss, ref_grads, _ = _run(student, [batch], None, kwargs)
    shared_calls = _record_shared_runs(monkeypatch)
    copies = _record_identical_rows(monkeypatch)
    kwargs["teacher"].shared_prefix = True
    counts = loss_normalizer_counts(batch, case[0], kwargs["actor_cfg"])
    normalizers = Normalizers(*(max(c, 1.0) for c in counts))
    for sizes in ([3, 3, 6], [1, 2, 4, 5]):
        loss, grads, _ = _run(student, _cut(batch, sizes), normalizers, kwargs)
        assert loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12), sizes
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12, msg=lambda m: f"micro-batches {sizes}: {m}")
    # the shared path ran (a one-row micro-batch has nothing to share: the plain one), with rows that
    # took an identical row's hidden states
    assert any(c is not None for c in shared_calls) and any(copies)


def _with_identical_responses(batch: RolloutBatch) -> RolloutBatch:
    """In each group, the second rollout answers exactly as the first and the third as the first but for its
    last token (rollouts of a prompt often answer alike): the shared-prefix forward runs such a row once
    for both (``prefix_plan._identical_rows``), while each keeps its own advantages, teacher and labels."""
    batch = RolloutBatch(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.present().items()})
    width = batch.responses.shape[1]
    for first in range(0, PROMPTS * N, N):
        for twin, keep_last in ((first + 1, False), (first + 2, True)):
            response, mask = batch.responses[first].clone(), batch.response_mask[first]
            if keep_last:  # the copy's own last token: not an input, so the hidden states are the same
                last = int(mask.sum()) - 1
                response[last] = batch.responses[twin][min(last, width - 1)] % 250 + 3
            batch.responses[twin], batch.response_mask[twin] = response, mask
            batch.teacher_input_ids[twin] = batch.teacher_input_ids[first]  # the same peers shown
            batch.teacher_attention_mask[twin] = batch.teacher_attention_mask[first]
            for prefix in ("", "teacher_"):
                getattr(batch, f"{prefix}input_ids")[twin, -width:] = response
                getattr(batch, f"{prefix}attention_mask")[twin, -width:] = mask
                positions = (getattr(batch, f"{prefix}attention_mask").cumsum(1) - 1).clamp(min=0)
                setattr(batch, f"{prefix}position_ids", positions)
    return batch


def _record_identical_rows(monkeypatch) -> list[int]:
    """How many rows of each planned forward take an identical row's hidden states instead of running."""
    import workers.prefix_plan as prefix_plan

    copies: list[int] = []
    real = prefix_plan._identical_rows

    def spy(*args):
        same_as = real(*args)
        copies.append(sum(s != r for r, s in enumerate(same_as)))
        return same_as

    monkeypatch.setattr(prefix_plan, "_identical_rows", spy)
    return copies


def _with_shared_student_prompts(batch: RolloutBatch) -> RolloutBatch:
    """Every rollout of a prompt carries that prompt (as the rollout makes them): each group's prompt
    columns copied from its first member."""
    ids = batch.input_ids.clone()
    for first in range(0, PROMPTS * N, N):
        ids[first : first + N, :PROMPT_WIDTH] = ids[first, :PROMPT_WIDTH]
    return dataclasses.replace(batch, input_ids=ids)


def _float64_norm(self, hidden):
    return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@pytest.fixture
def float64_norms(monkeypatch):
    """Qwen3's RMSNorm computes in float32 whatever the weights' dtype. A shared prefix sums its rollouts'
    gradients before that norm's backward, the plain forward after it, so the two agree only to float32
    rounding (~1e-7 relative); computed in the input dtype they agree to float64 rounding."""
    from transformers.models.qwen3 import modeling_qwen3

    monkeypatch.setattr(modeling_qwen3.Qwen3RMSNorm, "forward", _float64_norm)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-entropy{c[4]}")
def test_shared_prefix_student_gives_the_plain_loss_and_gradient(models, case, monkeypatch, float64_norms):
    """actor_rollout_ref.actor.shared_prefix: the student's forward/backward with each prompt run once for
    its rollouts gives the plain forward's mini-batch loss and gradient, for every loss mode, micro-batches
    aligned with the prompt groups or not."""
    import workers.prefix_plan as prefix_plan
    import workers.shared_prefix as shared_prefix

    student = models[0]
    batch = _with_identical_responses(_with_shared_student_prompts(make_mini_batch(student.config.vocab_size)))
    kwargs = _loss_kwargs(case, models, batch)
    ref_loss, ref_grads, _ = _run(student, [batch], None, kwargs)
    monkeypatch.setattr(prefix_plan, "_NODE_TOKENS", 0)  # the test prompts share only a few tokens
    shared_runs = []
    real = shared_prefix.shared_prefix_head
    monkeypatch.setattr(shared_prefix, "shared_prefix_head", lambda *a: shared_runs.append(real(*a)) or shared_runs[-1])
    counts = loss_normalizer_counts(batch, case[0], kwargs["actor_cfg"])
    normalizers = Normalizers(*(max(c, 1.0) for c in counts))
    kwargs["student_shared_prefix"] = True
    copies = _record_identical_rows(monkeypatch)
    cuts = ([6, 6], [3, 9]) if case[0] in ("dpo", "simpo") else ([6, 6], [1, 2, 4, 5])
    for sizes in cuts:
        loss, grads, _ = _run(student, _cut(batch, sizes), normalizers, kwargs)
        assert loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12), sizes
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12, msg=lambda m: f"micro-batches {sizes}: {m}")
    assert any(r is not None and r.requires_grad for r in shared_runs) and any(copies)
