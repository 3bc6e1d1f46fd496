"""A short, real demonstration of the algorithm core on the project's tiny tokenizer.

One prompt, eight rollouts of a student answering it (some right, some wrong), scored by an exact
verifier; MOPD's 2-success-1-failure peer contexts are selected, rendered into teacher prompts and
tokenized with the student's exact response ids appended; then a tiny Qwen3 student (random init, built
from a config) takes a few optimizer steps on the top-k JSD self-distillation loss against a frozen
copy of itself that reads the peer contexts. Run: ``python -m mopd.embedded.demo``.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from mopd.core.config import SelfDistillationConfig
from mopd.core.losses import self_distillation_loss
from mopd.core.peers import Rollout, select_peers
from mopd.core.reprompt import build_teacher_inputs, position_ids_of
from mopd.embedded.tiny_tokenizer import load_tiny_tokenizer

QUESTION = "What is 47 + 38? Answer with the number only."
ANSWER = 85
STUDENT_ANSWERS = ["85", "75", "85", "715", "86", "85", "75", "8 5"]


def verify(text: str) -> float:
    return 1.0 if text.strip() == str(ANSWER) else 0.0


def tiny_qwen3(vocab_size: int, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.3,  # a wide init so the context visibly matters
    )
    return Qwen3ForCausalLM(config).eval()


def response_logits(model, input_ids, attention_mask, position_ids, width: int, length: int):
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits[:, width - 1 : width + length - 1].float()


def main() -> None:
    parser = argparse.ArgumentParser(description="MOPD algorithm-core demonstration")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    tokenizer = load_tiny_tokenizer()
    config = SelfDistillationConfig(
        include_another_solution=True,
        include_failure_solution=True,
        failure_solution_condition="always",
        distillation_topk=20,
        max_reprompt_len=512,
    )
    prompt = [{"role": "system", "content": "You are a careful calculator."}, {"role": "user", "content": QUESTION}]
    rollouts = [Rollout(uid="q0", reward=verify(a), text=a) for a in STUDENT_ANSWERS]
    print(f"prompt: {QUESTION}")
    print("rollouts:", ", ".join(f"{r.text!r}:{r.reward:.0f}" for r in rollouts))

    selection = select_peers(rollouts, config, random.Random(args.seed))
    for i, ctx in enumerate(selection.contexts):
        print(f"  rollout {i} {rollouts[i].text!r:7} primary={ctx.primary} another={ctx.another} failure={ctx.failure}")

    # Student inputs: [prompt | response], responses right-padded and ending in EOS.
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    encoded = [tokenizer(r.text + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for r in rollouts]
    length = max(len(e) for e in encoded)
    responses = torch.full((len(rollouts), length), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros_like(responses)
    for i, ids in enumerate(encoded):
        responses[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    student_ids = torch.cat([torch.tensor([prompt_ids] * len(rollouts)), responses], dim=1)
    student_mask = torch.cat([torch.ones(len(rollouts), len(prompt_ids), dtype=torch.long), response_mask], dim=1)
    student_pos = position_ids_of(student_mask)

    teacher = build_teacher_inputs(
        tokenizer, [prompt] * len(rollouts), rollouts, selection, responses, response_mask, config
    )
    # The teacher scores exactly the student's tokens at its response positions.
    aligned = teacher.input_ids[:, teacher.prompt_width :].equal(student_ids[:, len(prompt_ids) :])
    print(f"teacher prompt lengths {teacher.prompt_lengths}; response ids aligned: {aligned}")
    print("teacher prompt of rollout 1 (a failure):")
    print("  | " + teacher.messages[1][-1]["content"].replace("\n", "\n  | "))

    student = tiny_qwen3(len(tokenizer), args.seed).train()
    frozen_teacher = tiny_qwen3(len(tokenizer), args.seed)
    frozen_teacher.load_state_dict(student.state_dict())
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    mask = torch.tensor(selection.distillation_mask)
    with torch.no_grad():
        teacher_logits = response_logits(
            frozen_teacher,
            teacher.input_ids,
            teacher.attention_mask,
            teacher.position_ids,
            teacher.prompt_width,
            length,
        )
    losses = []
    for _ in range(args.steps):
        student_logits = response_logits(student, student_ids, student_mask, student_pos, len(prompt_ids), length)
        loss, metrics = self_distillation_loss(student_logits, teacher_logits, responses, response_mask, mask, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print("top-k JSD self-distillation loss per step: " + " ".join(f"{v:.4f}" for v in losses))
    print(
        f"peer metrics: success_sample_fraction={selection.metrics['self_distillation/success_sample_fraction']:.3f} "
        f"failure_solution_fraction={selection.metrics['self_distillation/failure_solution_fraction']:.3f} "
        f"reprompt_sample_fraction={selection.metrics['self_distillation/reprompt_sample_fraction']:.3f}"
    )
    verdict = "decreased" if losses[-1] < losses[0] else "did NOT decrease"
    print(f"the loss {verdict} from {losses[0]:.4f} to {losses[-1]:.4f} in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
