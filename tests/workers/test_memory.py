"""workers/memory.py: the optimizer state's trip out of the device and back (actor.fsdp_config.optimizer_offload)."""

from __future__ import annotations

import torch

from workers.memory import move_optimizer_state


def test_adam_state_moves_out_and_back_and_training_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    twin = torch.nn.Linear(8, 4)
    twin.load_state_dict(model.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, twin)]
    x = torch.randn(16, 8)

    def step(m, opt):
        opt.zero_grad(set_to_none=True)
        m(x).square().mean().backward()
        opt.step()

    for m, opt in zip((model, twin), opts):
        step(m, opt)
    # out to a device that holds no data (meta): every moment leaves, the step counters stay
    moved = move_optimizer_state(opts[0], torch.device("meta"))
    assert moved == 2 * sum(p.numel() * 4 for p in model.parameters())
    for state in opts[0].state.values():
        assert state["exp_avg"].is_meta and state["exp_avg_sq"].is_meta and not state["step"].is_meta
    # a real round trip (CPU here; the device and host on a GPU) keeps the values: the next step is the same
    for state, twin_state in zip(opts[0].state.values(), opts[1].state.values()):
        state["exp_avg"], state["exp_avg_sq"] = twin_state["exp_avg"].clone(), twin_state["exp_avg_sq"].clone()
    assert move_optimizer_state(opts[0], torch.device("cpu")) == 0  # already there: nothing copied
    for m, opt in zip((model, twin), opts):
        step(m, opt)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
