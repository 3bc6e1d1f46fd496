"""What runs inside one rank: HF model build, FSDP2 wrap, actor update, teacher, rollout engines."""
