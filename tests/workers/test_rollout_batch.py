"""workers.rollout_batch: the batch's schema and its stage-boundary checks.

(a) a missing field or a disagreeing shape stops a stage boundary with one line naming the field and the
stage; the cutting helpers of ``workers/batch.py`` keep a ``RolloutBatch`` a ``RolloutBatch``;
(b) the real ``generate`` (the worker, the ``hf`` engine on the embedded model) returns the joined
sequences the next stages use, equal to what the driver used to build from prompt and response;
(c) one real training step (in-process, ``trainer.backend=local``) holds, after each stage, exactly the
fields ``STAGES``/``OPTIONAL`` document for it.
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from trainer.main import CONFIG_DIR
from workers.batch import (
    concat_batches,
    index_batch,
    sequence_lengths,
    slice_batch,
    split_batch,
    to_device,
    truncate_batch,
)
from workers.rollout_batch import OPTIONAL, STAGES, BatchError, RolloutBatch, SamplingParams, StepMeta


def _generated(rows: int = 4, prompt: int = 3, response: int = 5) -> RolloutBatch:
    mask = torch.ones(rows, prompt + response, dtype=torch.long)
    mask[0, 0] = 0
    return RolloutBatch(
        meta=StepMeta(step=2, sampling=SamplingParams(n=2, temperature=0.7)),
        input_ids=torch.arange(rows * (prompt + response)).view(rows, -1),
        attention_mask=mask,
        uid=[f"u{i // 2}" for i in range(rows)],
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        responses=torch.arange(rows * response).view(rows, response),
        response_mask=torch.ones(rows, response, dtype=torch.long),
    )


# ---------------------------------------------------------------------------------------------- (a)
def test_a_missing_field_is_one_line_naming_it_and_the_stage():
    batch = _generated()
    batch.position_ids = None
    with pytest.raises(BatchError) as err:
        batch.check("generate")
    assert str(err.value) == "batch after 'generate' lacks position_ids"
    with pytest.raises(BatchError, match=r"^batch after 'reward' lacks response_text$"):
        _generated().check("reward")


def test_a_disagreeing_shape_names_both_fields():
    batch = _generated(rows=8, response=12)
    batch.response_mask = torch.ones(8, 16, dtype=torch.long)
    with pytest.raises(BatchError) as err:
        batch.check("generate")
    assert str(err.value) == "batch after 'generate': response_mask is [8, 16], responses [8, 12]"
    assert "\n" not in str(err.value)
    batch = _generated()
    batch.scores = torch.zeros(3)
    with pytest.raises(BatchError, match=r"^batch after 'reward': scores has 3 rows, the batch 4$"):
        batch.response_text, batch.reward_extra = ["x"] * 4, [{}] * 4
        batch.check("reward")
    batch = _generated()
    batch.advantages = torch.zeros(4, 6)
    with pytest.raises(BatchError, match=r"advantages is \[4, 6\], responses \[4, 5\]"):
        batch.check("generate")
    with pytest.raises(ValueError, match="unknown batch stage 'gen'"):
        batch.check("gen")


def test_meta_is_frozen_and_says_the_loss_temperature():
    meta = StepMeta(step=1, sampling=SamplingParams(temperature=0.7))
    assert meta.temperature == 0.7
    assert StepMeta(step=1, sampling=SamplingParams(temperature=0.7, do_sample=False)).temperature == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.step = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.sampling.n = 4


def test_helpers_cut_a_rollout_batch_and_keep_meta_and_unset_fields():
    batch = _generated(rows=6)
    shards = split_batch(batch, 3)
    assert all(isinstance(s, RolloutBatch) and s.meta is batch.meta and s.scores is None for s in shards)
    assert [s.uid for s in shards] == [["u0", "u0"], ["u1", "u1"], ["u2", "u2"]]
    back = concat_batches(shards)
    assert isinstance(back, RolloutBatch) and back.present().keys() == batch.present().keys()
    for name, value in batch.present().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(getattr(back, name), value), name
    assert back.uid == batch.uid and back.meta is batch.meta
    picked = index_batch(batch, [5, 0])
    assert picked.uid == ["u2", "u0"] and torch.equal(picked.responses, batch.responses[[5, 0]])
    assert truncate_batch(batch, 2).rows() == 2 and slice_batch(batch, 1, 4).rows() == 3
    assert to_device(batch, torch.device("cpu")).present().keys() == batch.present().keys()
    assert sequence_lengths(batch, "attention_mask", "teacher_attention_mask") == [(7,)] + [(8,)] * 5
    # Responses of different widths (shards of different engines' budgets) are right-padded to the widest.
    short = slice_batch(batch, 3, 6)
    short.responses, short.response_mask = short.responses[:, :3], short.response_mask[:, :3]
    wide = concat_batches([slice_batch(batch, 0, 3), short])
    assert wide.responses.shape == (6, 5) and not wide.response_mask[3:, 3:].any()
    # It crosses Ray (pickle) as itself.
    again = pickle.loads(pickle.dumps(batch))
    assert (
        isinstance(again, RolloutBatch) and again.meta == batch.meta and torch.equal(again.input_ids, batch.input_ids)
    )


def test_every_field_belongs_to_exactly_one_stage():
    named = [f for stage in STAGES for f in STAGES[stage] + OPTIONAL.get(stage, ())]
    assert sorted(named) == sorted(f.name for f in dataclasses.fields(RolloutBatch))
    assert len(named) == len(set(named))


# ---------------------------------------------------------------------------------------------- (b)
def _config(*overrides: str, name: str = "grpo") -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            config_name=name,
            overrides=[
                "trainer.backend=local",
                "trainer.device=cpu",
                "actor_rollout_ref.model.dtype=float32",
                "data.train_batch_size=2",
                "actor_rollout_ref.rollout.n=2",
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                "data.max_response_length=8",
                *overrides,
            ],
        )
    return cfg


def _prompts(count: int):
    from mopd.common.models import EMBEDDED_DIR
    from trainer.prompt_dataset import PromptDataset, collate_prompts
    from workers import model_utils

    tok = model_utils.load_tokenizer(model_utils.resolve_model_path("embedded"))
    data = PromptDataset(str(EMBEDDED_DIR / "train.parquet"), tok, max_prompt_length=256, max_samples=count)
    return collate_prompts([data[i] for i in range(count)], tok.pad_token_id)


def test_generate_returns_the_joined_batch_the_driver_used_to_build():

    from trainer.config_sections import load
    from trainer.worker_group import LocalWorkerGroup
    from workers.config import WorkerConfig
    from workers.fsdp_worker import ActorRolloutRefWorker
    from workers.seeding import derive_seed

    cfg = load(_config())
    group = LocalWorkerGroup(ActorRolloutRefWorker, WorkerConfig.of(cfg))
    try:
        worker = group.worker
        worker.init_model(total_optimizer_steps=10)
        worker.sync_rollout_weights()
        items = _prompts(4)
        n = 3
        sampling = SamplingParams(n=n, temperature=1.0, max_new_tokens=8)
        request = RolloutBatch(
            meta=StepMeta(step=5, sampling=sampling),
            input_ids=items.input_ids,
            attention_mask=items.attention_mask,
            uid=list(items.uid),
        )
        batch = worker.generate(request)
        batch.check("generate")
        assert set(batch.present()) == set(STAGES["prompts"] + STAGES["generate"] + OPTIONAL["generate"])
        # What the engine returns for the same seeds, and the driver's former rebuild from it.
        seeds = [derive_seed(cfg.trainer.seed, 5, j, f"gen:{u}") for u in items.uid for j in range(n)]
        out = worker.rollout.generate(items.input_ids, items.attention_mask, sampling, seeds)
        prompt_mask = items.attention_mask.repeat_interleave(n, dim=0)
        old_mask = torch.cat([prompt_mask, out["response_mask"]], dim=1)
        assert torch.equal(batch.responses, out["responses"])
        assert torch.equal(batch.response_mask, out["response_mask"])
        assert torch.equal(batch.rollout_log_probs, out["rollout_log_probs"])
        assert torch.equal(
            batch.input_ids, torch.cat([items.input_ids.repeat_interleave(n, dim=0), out["responses"]], dim=1)
        )
        assert torch.equal(batch.attention_mask, old_mask)
        assert torch.equal(batch.position_ids, (old_mask.cumsum(dim=1) - 1).clamp(min=0))
        assert batch.uid == [u for u in items.uid for _ in range(n)] and batch.meta is request.meta
        # Shards generated apart and concatenated (the dispatch of two ranks) give the same batch: the same
        # tokens and positions; log-probs to float32 rounding (another batch shape, other kernels).
        parts = concat_batches([worker.generate(s) for s in split_batch(request, 2)])
        for name, value in batch.present().items():
            if name == "rollout_log_probs":
                torch.testing.assert_close(parts.rollout_log_probs, value, rtol=0, atol=1e-5)
            elif isinstance(value, torch.Tensor):
                assert torch.equal(getattr(parts, name), value), name
    finally:
        group.shutdown()


# ---------------------------------------------------------------------------------------------- (c)
def test_one_training_step_holds_the_documented_fields_after_each_stage(tmp_path, monkeypatch):
    """MOPD (peers on), on-policy (no old_log_prob stage), one step: every stage boundary checked and
    recorded; after each, the fields set are those of the stages run so far, no more, no fewer."""
    from omegaconf import OmegaConf

    from trainer.config_schema import resolve_aliases, validate_config
    from trainer.ppo_trainer import Trainer

    cfg = _config(
        "data.train_files=embedded",
        "data.val_files=null",
        "trainer.total_training_steps=1",
        "trainer.logger=[console]",
        f"trainer.default_local_dir={tmp_path}",
        "trainer.rollout_data_dir=null",
        "trainer.validation_data_dir=null",
        name="mopd",
    )
    resolve_aliases(cfg)
    validate_config(cfg)
    container = OmegaConf.to_container(cfg, resolve=True)
    seen: list[tuple[str, set]] = []
    real_check = RolloutBatch.check

    def recording_check(self, stage):
        real_check(self, stage)
        seen.append((stage, set(self.present())))

    monkeypatch.setattr(RolloutBatch, "check", recording_check)
    trainer = Trainer(container)
    try:
        trainer.fit()
    finally:
        trainer.close()

    so_far: set = set()
    expected = {}
    for stage in ("prompts", "generate", "reward", "peers", "adv"):
        so_far |= set(STAGES[stage])
        if stage == "generate":
            so_far.add("rollout_log_probs")  # rollout.calculate_log_probs: on by default
        expected[stage] = set(so_far)
    # The worker checks its request (prompts) and the update's batch (shapes, with the generate fields).
    assert [s for s, _ in seen] == ["prompts", "prompts", "generate", "reward", "peers", "adv", "generate"]
    for stage, present in seen[:-1]:
        assert present == expected[stage], (stage, present ^ expected[stage])
    assert seen[-1][1] == expected["adv"]  # the update received what adv left, nothing more
