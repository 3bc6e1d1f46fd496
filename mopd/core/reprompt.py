"""Teacher inputs: peer context -> teacher prompt -> token ids aligned with the student's response.

The teacher scores the student's **own** response tokens under a prompt that also shows peers. The
response ids are appended unchanged after the chat-templated teacher prompt, and every teacher prompt is
left-padded to one width ``P``, so teacher logits at columns ``[P-1, P+R-1)`` score exactly the tokens
the student's logits score at its response positions. Rules: ``docs/algorithm_core.md`` §3.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mopd.core.config import SelfDistillationConfig
from mopd.core.peers import PeerContext, PeerSelection, Rollout, strip_thinking

Message = Mapping[str, Any]


# ----------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherSections:
    """The rendered context sections (empty string = absent)."""

    solution: str = ""
    solution_summaries: str = ""
    another_solution: str = ""
    failure: str = ""
    feedback: str = ""


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded rows (the last dim): 0 at the first real token, padding before it also 0.
    The one rule for every sequence the models see (prompts, joined rollouts, teacher inputs)."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)


def render_sections(
    ctx: PeerContext, rollouts: Sequence[Rollout], own_feedback: str | None, config: SelfDistillationConfig
) -> TeacherSections:
    def demo(j: int) -> str:
        text = rollouts[j].text
        return strip_thinking(text) if config.remove_thinking_from_demonstration else text

    solution = another = failure = ""
    if ctx.primary is not None:
        solution = config.solution_template.format(successful_previous_attempt=demo(ctx.primary))
    if ctx.another is not None:
        another = config.another_solution_template.format(another_successful_attempt=demo(ctx.another))
    if ctx.failure is not None:  # failures are shown as written, thinking included
        failure = config.failure_solution_template.format(failed_attempt=rollouts[ctx.failure].text)
    successes = [b for b in ctx.control_blocks if b.label == "success"]
    if successes:
        solution = config.solution_template.format(successful_previous_attempt=demo(successes[0].index))
        another = "".join(
            config.another_solution_template.format(another_successful_attempt=demo(b.index)) for b in successes[1:]
        )
    failed_blocks = [b for b in ctx.control_blocks if b.label == "failure"]
    if failed_blocks:
        failure = "".join(config.failure_solution_template.format(failed_attempt=demo(b.index)) for b in failed_blocks)
    summaries = "".join(
        (
            config.summary_item_template
            if rollouts[j].reward >= config.success_reward_threshold
            else config.summary_item_template_failed
        ).format(summary_text=text)
        for j, text in zip(ctx.summaries, ctx.summary_texts)
    )
    feedback = config.feedback_template.format(feedback_raw=own_feedback) if ctx.use_feedback else ""
    return TeacherSections(solution, summaries, another, failure, feedback)


def _user_segments(prompt_text: str, sections: TeacherSections, config: SelfDistillationConfig):
    """The teacher's user message as ``(text, is_peer_context)`` pieces, in order."""
    values = {"prompt": prompt_text, **sections.__dict__}
    pieces: list[tuple[str, bool]] = []
    for literal, name, _spec, _conv in string.Formatter().parse(config.reprompt_template):
        if literal:
            pieces.append((literal, False))
        if name is not None and values[name]:
            pieces.append((values[name], name != "prompt"))
    return pieces


def render_teacher_messages(
    prompt_messages: Sequence[Message],
    ctx: PeerContext,
    rollouts: Sequence[Rollout],
    own_feedback: str | None,
    config: SelfDistillationConfig,
) -> tuple[list[dict], list]:
    """Teacher chat messages (earlier messages kept verbatim) and the user message's pieces."""
    if not prompt_messages:
        raise ValueError("a prompt needs at least one chat message")
    *earlier, last = prompt_messages
    prompt_text = last["content"]
    if ctx.has_context:
        pieces = _user_segments(prompt_text, render_sections(ctx, rollouts, own_feedback, config), config)
    else:
        pieces = [(prompt_text, False)]
    content = "".join(text for text, _ in pieces)
    return [dict(m) for m in earlier] + [{**dict(last), "content": content}], pieces


def append_summary_instruction(messages: Sequence[Message], instruction: str) -> list[dict]:
    """A copy of ``messages`` whose last ``user`` message ends with ``instruction`` (the release's rule for
    training prompts with ``summarize_solutions``: the policy then writes a <summary> its peers are shown)."""
    out = [dict(m) for m in messages]
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    if not users:
        raise ValueError("summarize_solutions: a prompt has no user message to append the summary instruction to")
    out[users[-1]]["content"] = out[users[-1]]["content"] + instruction
    return out


# ----------------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------------
@dataclass
class TeacherInputs:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    position_ids: torch.Tensor  # [B, P + R]
    prompt_width: int  # P: teacher logits at [P-1, P+R-1) score the response tokens
    prompt_lengths: list[int]  # unpadded teacher-prompt length per sample
    dropped_context_tokens: list[int]  # peer-context tokens removed by truncation per sample
    messages: list[list[dict]] = field(repr=False, default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def response_slice(self, response_length: int) -> slice:
        return slice(self.prompt_width - 1, self.prompt_width + response_length - 1)


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _encode(tokenizer, text: str) -> list[int]:
    return _encode_all(tokenizer, [text])[0]


def truncate_context(
    tokenizer, full_text: str, content: str, pieces, max_len: int, side: str, name: str
) -> tuple[list[int], int]:
    """Token ids with peer-context tokens removed from ``side`` until the prompt fits ``max_len``."""
    start = full_text.rfind(content)
    if start < 0:
        raise ValueError(
            f"teacher prompt of sample {name}: the chat template altered the message text, so the peer "
            f"context cannot be located for truncation; raise max_reprompt_len (now {max_len})"
        )
    parts = [(full_text[:start], False), *pieces, (full_text[start + len(content) :], False)]
    encoded = [(_encode(tokenizer, text), is_ctx) for text, is_ctx in parts if text]
    fixed = sum(len(ids) for ids, is_ctx in encoded if not is_ctx)
    context = sum(len(ids) for ids, is_ctx in encoded if is_ctx)
    if fixed > max_len:
        raise ValueError(
            f"teacher prompt of sample {name} needs {fixed} tokens without any peer context, more than "
            f"max_reprompt_len={max_len}; raise actor_rollout_ref.actor.self_distillation.max_reprompt_len "
            "or lower data.max_prompt_length"
        )
    to_drop = context - (max_len - fixed)
    order = range(len(encoded)) if side == "left" else range(len(encoded) - 1, -1, -1)
    remaining = to_drop
    for k in order:
        ids, is_ctx = encoded[k]
        if not is_ctx or remaining <= 0:
            continue
        cut = min(remaining, len(ids))
        encoded[k] = (ids[cut:] if side == "left" else ids[: len(ids) - cut], True)
        remaining -= cut
    return [t for ids, _ in encoded for t in ids], to_drop


def build_teacher_inputs(
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    rollouts: Sequence[Rollout],
    selection: PeerSelection,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    config: SelfDistillationConfig,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    sample_names: Sequence[str] | None = None,
) -> TeacherInputs:
    """Tokenized teacher inputs ``[teacher prompt (left-padded) | student response ids]``.

    ``prompts[i]`` is rollout i's original chat (system messages first, the question last);
    ``responses``/``response_mask`` are the student's right-padded response ids ``[B, R]``.
    """
    batch = len(rollouts)
    if not (len(prompts) == len(selection.contexts) == batch == responses.shape[0] == response_mask.shape[0]):
        raise ValueError(
            f"build_teacher_inputs: {len(prompts)} prompts, {len(rollouts)} rollouts, "
            f"{len(selection.contexts)} contexts and {responses.shape[0]} responses must all match"
        )
    kwargs = dict(chat_template_kwargs or {})
    max_len = config.max_reprompt_len
    rendered = [
        render_teacher_messages(prompts[i], selection.contexts[i], rollouts, rollouts[i].feedback, config)
        for i in range(batch)
    ]
    # Rollouts of a prompt often show the same peers: each distinct chat is templated and tokenized once,
    # the distinct texts in one batched tokenizer call.
    keys = [json.dumps(msgs, sort_keys=True, default=str) for msgs, _ in rendered]
    texts = {
        key: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
        for key, (msgs, _) in zip(keys, rendered)
    }
    encoded = dict(zip(texts, _encode_all(tokenizer, list(texts.values()))))
    prompt_ids, messages, dropped = [], [], []
    for i, ((msgs, pieces), key) in enumerate(zip(rendered, keys)):
        name = sample_names[i] if sample_names is not None else f"#{i} (uid {rollouts[i].uid!r})"
        text, ids = texts[key], encoded[key]
        drop = 0
        if len(ids) > max_len:
            if config.reprompt_truncation == "error":
                raise ValueError(
                    f"teacher prompt of sample {name} has {len(ids)} tokens, more than max_reprompt_len="
                    f"{max_len} (reprompt_truncation=error); raise max_reprompt_len or set "
                    "reprompt_truncation=left"
                )
            ids, drop = truncate_context(
                tokenizer, text, msgs[-1]["content"], pieces, max_len, config.reprompt_truncation, name
            )
        prompt_ids.append(ids)
        messages.append(msgs)
        dropped.append(drop)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(ids) for ids in prompt_ids) if prompt_ids else 0
    prompt_tensor = torch.full((batch, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((batch, width), dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        if ids:
            prompt_tensor[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[i, width - len(ids) :] = 1
    input_ids = torch.cat([prompt_tensor, responses.to(torch.long).cpu()], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask.to(torch.long).cpu()], dim=1)
    position_ids = position_ids_of(attention_mask)
    lengths = [len(ids) for ids in prompt_ids]
    metrics = {
        "self_distillation/teacher_prompt_length/mean": sum(lengths) / max(batch, 1),
        "self_distillation/teacher_prompt_length/max": float(max(lengths, default=0)),
        "self_distillation/teacher_prompt_length/min": float(min(lengths, default=0)),
        "self_distillation/teacher_prompt_length/clip_ratio": sum(d > 0 for d in dropped) / max(batch, 1),
    }
    return TeacherInputs(input_ids, attention_mask, position_ids, width, lengths, dropped, messages, metrics)


def compute_step_ids(responses: torch.Tensor, response_mask: torch.Tensor, tokenizer, separator: str) -> torch.Tensor:
    """Reasoning-step id of every response token ``[B, R]``; padding is -1.

    The token whose text completes an occurrence of ``separator`` ends its step (it keeps the step's
    id; the next token starts id + 1). Matching is on decoded text, so a separator merged into a larger
    BPE token (e.g. ``".\\n\\n"``) still ends a step.
    """
    pieces: dict[int, str] = {}
    out = torch.full(responses.shape, -1, dtype=torch.long)
    for row in range(responses.shape[0]):
        step, tail = 0, ""
        for col in range(responses.shape[1]):
            if response_mask[row, col] <= 0:
                continue
            token = int(responses[row, col])
            if token not in pieces:
                pieces[token] = tokenizer.decode([token])
            out[row, col] = step
            tail += pieces[token]
            hit = tail.rfind(separator)
            if hit >= 0:
                step += 1
                tail = tail[hit + len(separator) :]
            else:
                tail = tail[-(len(separator) - 1) :] if len(separator) > 1 else ""
    return out
