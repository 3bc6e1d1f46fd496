"""workers/sharded_load.py: each rank reads only its rows of the safetensors files into FSDP2 shards (no full
float32 model on a device); the result equals from_pretrained's model, weights and logits, uneven shards
included; the hf engine's copy is built unfilled in the compute dtype; unmappable checkpoints fall back."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from mopd.common.models import load_causal_lm, resolve_model_path
from workers import model_utils, sharded_load

EMBEDDED = resolve_model_path("embedded")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ids() -> torch.Tensor:
    return torch.arange(3, 40).reshape(1, -1) % 200 + 3


def _rank(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    model_utils.init_distributed(rank, world, "127.0.0.1", port, torch.device("cpu"))
    try:
        model = sharded_load.build_sharded(
            EMBEDDED,
            device=torch.device("cpu"),
            rank=rank,
            world_size=world,
            compute_dtype=torch.float32,
            attn_implementation="sdpa",
        )
        reference = load_causal_lm(EMBEDDED, dtype=torch.float32, attn_implementation="sdpa")
        full = model_utils.full_state_dict(model)
        want = reference.state_dict()
        assert set(full) == set(want)
        for name, tensor in want.items():
            assert torch.equal(full[name].cpu(), tensor), name
        # this rank holds about 1/world of the weights, never the whole model
        local = sum(p.to_local().numel() for p in model.parameters())
        total = sum(p.numel() for p in model.parameters())
        assert local <= 1.05 * total / world, (local, total)  # (ceil-sized chunks: rank 0 a little more)
        # the unsaved rotary frequencies were recomputed: the forward equals from_pretrained's
        with torch.no_grad():
            got = model(input_ids=_ids()).logits
            expected = reference(input_ids=_ids()).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_one_float32_rank_loads_a_plain_module_with_tied_embeddings(capsys):
    model_utils.init_distributed(0, 1, "127.0.0.1", _free_port(), torch.device("cpu"))
    try:
        model = sharded_load.build_sharded(
            EMBEDDED,
            device=torch.device("cpu"),
            rank=0,
            world_size=1,
            compute_dtype=torch.float32,
            attn_implementation="sdpa",
        )
    finally:
        dist.destroy_process_group()
    assert "from_pretrained" not in capsys.readouterr().out  # the safetensors path, no fallback
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reference = load_causal_lm(EMBEDDED, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=_ids()).logits, reference(input_ids=_ids()).logits, rtol=0, atol=0)


def test_three_ranks_load_their_rows_and_match_from_pretrained():
    import torch.multiprocessing as mp

    # 3 ranks: the 32-wide q/k norms split 11 + 11 + 10 (uneven FSDP2 chunks)
    mp.spawn(_rank, args=(3, _free_port()), nprocs=3, join=True)


def test_engine_copy_is_unfilled_compute_dtype_until_the_sync(tmp_path):
    copy = sharded_load.build_engine_copy(
        EMBEDDED, dtype=torch.bfloat16, device=torch.device("cpu"), attn_implementation="sdpa"
    )
    reference = load_causal_lm(EMBEDDED, dtype=torch.bfloat16, attn_implementation="sdpa")
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert copy.generation_config.eos_token_id == reference.generation_config.eos_token_id
    with torch.no_grad():
        for p, q in zip(copy.parameters(), reference.parameters()):
            p.copy_(q)  # what the weight sync does before every generation
        torch.testing.assert_close(copy(input_ids=_ids()).logits, reference(input_ids=_ids()).logits, rtol=0, atol=0)


def test_a_checkpoint_without_safetensors_falls_back_with_one_line(tmp_path, capsys):
    model_utils.init_distributed(0, 1, "127.0.0.1", _free_port(), torch.device("cpu"))
    try:
        reference = load_causal_lm(EMBEDDED, dtype=torch.float32)
        reference.config.save_pretrained(tmp_path)
        torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")  # a .bin checkpoint only
        model = sharded_load.build_sharded(
            str(tmp_path),
            device=torch.device("cpu"),
            rank=0,
            world_size=1,
            compute_dtype=torch.float32,
            attn_implementation="sdpa",
        )
        assert "loading with from_pretrained on the host instead" in capsys.readouterr().out
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert torch.equal(p, q), name
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_tensor_the_model_lacks_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.extra.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    model = load_causal_lm(EMBEDDED, dtype=torch.float32)
    with pytest.raises(sharded_load.UnmappableCheckpoint, match="model.extra.weight"):
        sharded_load.load_shards_(model, [tmp_path / "model.safetensors"], 0, 1)
