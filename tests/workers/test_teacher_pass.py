"""The worker's teacher pass: one no-grad pass over a mini-batch in log-prob-sized chunks gives, row for
row, the head inputs the per-micro-batch teacher forward gives (float64: 1e-10), for the EMA and the
trust-region teacher, fixed and token-budget chunks, with and without shared prefixes.
"""

from __future__ import annotations

import pytest
import torch

from tests.workers.test_actor_loss import (
    PROMPTS,
    N,
    _record_shared_runs,
    _with_shared_teacher_prefixes,
    make_mini_batch,
)
from trainer.main import CONFIG_DIR
from workers.batch import slice_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _worker(*overrides: str):
    from trainer.worker_group import free_port
    from workers.fsdp_worker import ActorRolloutRefWorker

    worker = ActorRolloutRefWorker(_config(*overrides), 0, 1)
    worker.set_master("127.0.0.1", free_port())
    worker.init_model(total_optimizer_steps=10)
    return worker


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("actor_rollout_ref.ref.shared_prefix=false",),
        ("actor_rollout_ref.actor.self_distillation.teacher_regularization=trust-region",),
        ("actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=40"),
    ],
    ids=["shared", "plain", "trust-region", "token-budget"],
)
def test_teacher_pass_equals_the_per_micro_batch_teacher(overrides, monkeypatch):
    shared_runs = _record_shared_runs(monkeypatch)
    worker = _worker(*overrides)
    try:
        for p in worker.actor.parameters():  # a student unlike the teacher, so trust-region mixing shows
            p.data.add_(0.01 * torch.randn_like(p))
        batch = _with_shared_teacher_prefixes(make_mini_batch(worker.actor.config.vocab_size))
        stored, tokens_run = worker._teacher_pass(batch, N)
        assert stored.shape[:2] == batch.response_mask.shape
        # the tokens its forwards ran (MFU's count): all valid ones plain, fewer shared; twice for trust-region
        plain_tokens = int(batch.teacher_attention_mask.sum()) * (2 if worker.teacher.mixes_student else 1)
        assert 0 < tokens_run <= plain_tokens and (tokens_run < plain_tokens) == worker.teacher.shared_prefix
        for start in range(0, PROMPTS * N, 2):  # other cuts than the pass's chunks
            part = slice_batch(batch, start, start + 2)
            valid = part.response_mask.bool()
            torch.testing.assert_close(stored[start : start + 2][valid], worker.teacher.hidden(part), rtol=0, atol=2e-5)
            assert not stored[start : start + 2][~valid].any()
        assert any(r is not None for r in shared_runs) == worker.teacher.shared_prefix  # the shared path ran
    finally:
        worker.shutdown()


def _two_rank_teacher_pass(rank: int, port: int, out_dir: str, overrides: tuple = ()) -> None:
    """Rank 0's rows share teacher prefixes (a prefix pass + rest passes per chunk), rank 1's do not (one
    plain forward per chunk): different forward counts, which FSDP2's per-forward all-gathers must not see."""
    import workers.prefix_plan as prefix_plan
    from workers.fsdp_worker import ActorRolloutRefWorker

    prefix_plan._NODE_TOKENS = 0  # these short prompts share only a few tokens (a spawned process)
    torch.set_num_threads(1)
    worker = ActorRolloutRefWorker(_config(*overrides), rank, 2)
    worker.set_master("127.0.0.1", port)
    worker.init_model(total_optimizer_steps=10)
    try:
        torch.manual_seed(rank)
        with torch.no_grad():  # a student unlike the teacher: a mixed-up all-gather would show
            for p in worker.actor.parameters():
                p.add_(0.05 * torch.randn_like(p))
        batch = make_mini_batch(worker.actor.config.vocab_size, seed=rank)
        batch = _with_shared_teacher_prefixes(batch) if rank == 0 else batch
        calls = [0]
        hook = worker.teacher_module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        shared, _ = worker._teacher_pass(batch, N)
        made = calls[0]
        worker.teacher.shared_prefix = False
        plain, _ = worker._teacher_pass(batch, N)
        hook.remove()
        torch.save(
            {"shared": shared, "plain": plain, "forwards": made, "plain_forwards": calls[0] - made},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        worker.shutdown()


def _config(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            config_name="mopd",
            overrides=[
                "trainer.backend=local",
                "trainer.device=cpu",
                "actor_rollout_ref.model.dtype=float32",
                f"data.train_batch_size={PROMPTS}",
                f"actor_rollout_ref.rollout.n={N}",
                f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=7",
                *overrides,
            ],
        )
    from trainer.config_sections import load
    from workers.config import WorkerConfig

    return WorkerConfig.of(load(cfg))


@pytest.mark.parametrize(
    "overrides",
    [(), ("actor_rollout_ref.actor.self_distillation.teacher_regularization=trust-region",)],
    ids=["ema", "trust-region"],
)
def test_teacher_pass_under_fsdp2_matches_forward_counts_across_ranks(tmp_path, overrides):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(
        _two_rank_teacher_pass, args=(port, str(tmp_path), overrides), nprocs=2, join=False, start_method="spawn"
    )
    for process in ctx.processes:
        process.join(timeout=300)
    hung = [p.pid for p in ctx.processes if p.is_alive()]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    assert not hung, "the teacher pass hung under FSDP2: ranks made different numbers of forwards"
    assert all(p.exitcode == 0 for p in ctx.processes), [p.exitcode for p in ctx.processes]
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # rank 1 (nothing shared) padded its plain forwards to rank 0's count
    assert results[0]["forwards"] == results[1]["forwards"] > results[1]["plain_forwards"]
    for r in results:
        torch.testing.assert_close(r["shared"], r["plain"], rtol=0, atol=2e-5)
