"""Teacher scores: the mean log-probability of a response under each teacher context.

Two input formats:

- ``chat`` (default) — what the trainer's teacher sees: ``tokenizer.apply_chat_template(messages,
  tokenize=False, add_generation_prompt=True, **chat_template_kwargs)`` encoded with
  ``add_special_tokens=False`` (as ``mopd.core.reprompt.build_teacher_inputs`` does), followed by the response
  as the trainer holds it: ``tokenizer(response_text, add_special_tokens=False)`` + ``eos`` (the generated
  end-of-turn token the decoded text no longer shows; left out for a response that hit the generation
  limit — marked ``response_truncated`` or ``max_response_length`` tokens long — or with
  ``append_eos=False``).
- ``raw`` (``--raw-text``, and always for the ``base_raw`` condition) — the release's scoring:
  ``[bos?] + tok(assembled_context_text) + tok(response_text)``, no chat template, no eos.

A context too long for ``max_model_len`` together with the response is cut on the left, never the
response: in chat format first the peer context (training's ``reprompt_truncation=left`` rule, which keeps
the system prompt, the question, the template text and the assistant header), then, if that is not
enough, plain left truncation. A response that alone does not fit is skipped (counted in the summary).

Batches are left-padded (``position_ids = cumsum(mask) - 1``) and only the last ``max_response + 1``
positions' logits are materialised when the model supports ``logits_to_keep``.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from mopd.analysis.variants import pieces_from_spans
from mopd.common import models
from mopd.core.reprompt import position_ids_of, truncate_context


# ----------------------------------------------------------------------------------------------------
# Model (loading lives in mopd.common.models, shared with the trainer's workers)
# ----------------------------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    return models.pick_device(name, flag="--device")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    return models.pick_dtype(name, device, flag="--dtype")


def load_model_and_tokenizer(path: str, *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    path = models.resolve_model_path(path, flag="--model")
    tokenizer = models.load_tokenizer(path, trust_remote_code=trust_remote_code, flag="--model")
    model = models.load_causal_lm(path, dtype=dtype, trust_remote_code=trust_remote_code, device=device, flag="--model")
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------
# Examples
# ----------------------------------------------------------------------------------------------------
@dataclass
class Example:
    key: int  # position in the output
    context_ids: list[int]
    response_ids: list[int]
    prompt_len_full: int
    dropped: int
    score_format: str
    appended_eos: bool
    base_input_match: bool | None = None
    meta: dict = field(default_factory=dict)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(
    tokenizer,
    variant: dict,
    target: dict,
    *,
    raw_text: bool,
    max_model_len: int,
    append_eos: bool = True,
    chat_template_kwargs: dict | None = None,
    max_response_length: int | None = None,
    key: int = 0,
) -> Example | None:
    """Token ids of one (context, response) pair; ``None`` when the response alone exceeds the budget.

    ``max_response_length`` (the run's ``data.max_response_length``): a response of that many tokens
    stopped at the generation limit, without an eos, so none is appended (the dump does not say)."""
    response_text = target["response_text"]
    use_raw = raw_text or variant.get("score_format") == "raw"
    base_match = None
    if use_raw:
        bos = getattr(tokenizer, "bos_token_id", None)
        prefix = [bos] if bos is not None else []
        context = prefix + _encode(tokenizer, variant["assembled_context_text"])
        response = _encode(tokenizer, response_text)
        eos_added = False
        pieces = None
        text = None
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat template: score with --raw-text, or give a model whose tokenizer defines one"
            )
        kwargs = {**(variant.get("chat_template_kwargs") or {}), **(chat_template_kwargs or {})}
        text = tokenizer.apply_chat_template(
            variant["teacher_messages"], tokenize=False, add_generation_prompt=True, **kwargs
        )
        context = _encode(tokenizer, text)
        response = _encode(tokenizer, response_text)
        hit_limit = max_response_length is not None and len(response) >= max_response_length
        eos_added = bool(
            append_eos and not target.get("response_truncated") and not hit_limit and tokenizer.eos_token_id is not None
        )
        if eos_added:
            response = response + [int(tokenizer.eos_token_id)]
        spans = variant.get("peer_context_spans")
        pieces = pieces_from_spans(variant["teacher_messages"][-1]["content"], spans) if spans is not None else None
        if variant.get("student_input_text") is not None:
            base_match = text == variant["student_input_text"]
    if len(response) >= max_model_len:
        return None
    full = len(context)
    budget = max_model_len - len(response)
    dropped = 0
    if full > budget:
        cut = None
        if pieces is not None and text is not None:
            try:
                cut, _ = truncate_context(
                    tokenizer,
                    text,
                    variant["teacher_messages"][-1]["content"],
                    pieces,
                    budget,
                    "left",
                    variant.get("variant_id", "?"),
                )
            except ValueError:
                cut = None
        if cut is None or len(cut) > budget:
            if use_raw and context and context[0] == getattr(tokenizer, "bos_token_id", None):
                cut = context[:1] + context[len(context) - budget + 1 :] if budget > 1 else context[-budget:]
            else:
                cut = context[len(context) - budget :]
        dropped = full - len(cut)
        context = cut
    return Example(key, context, response, full, dropped, "raw" if use_raw else "chat", eos_added, base_match)


# ----------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------
def _keep_arg(model) -> str | None:
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return name
    return None


@torch.no_grad()
def response_log_probs(model, batch: Sequence[Example], pad_id: int, device: torch.device) -> list[torch.Tensor]:
    """Per-token log-probs of each example's response (float32, on CPU), one forward for the batch."""
    lengths = [len(e.context_ids) + len(e.response_ids) for e in batch]
    width = max(lengths)
    ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (e, n) in enumerate(zip(batch, lengths)):
        ids[row, width - n :] = torch.tensor(e.context_ids + e.response_ids, dtype=torch.long)
        mask[row, width - n :] = 1
    position_ids = position_ids_of(mask)
    max_r = max(len(e.response_ids) for e in batch)
    keep = min(max_r + 1, width)
    kwargs = {}
    arg = _keep_arg(model)
    if arg is not None:
        kwargs[arg] = keep
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        **kwargs,
    )
    logits = out.logits
    kept = logits.shape[1]  # = keep when supported, else width
    results = []
    for row, e in enumerate(batch):
        r = len(e.response_ids)
        if r == 0:
            results.append(torch.zeros(0))
            continue
        # token at absolute position t is predicted by logits at t-1; responses end at the right edge
        start = kept - r - 1
        row_logits = logits[row, start : kept - 1].float()
        labels = ids[row, width - r :].to(row_logits.device)
        lp = torch.log_softmax(row_logits, dim=-1).gather(-1, labels[:, None]).squeeze(-1)
        results.append(lp.cpu())
    return results


def _batches(examples: list[Example], batch_size: int, max_batch_tokens: int | None) -> Iterable[list[Example]]:
    order = sorted(examples, key=lambda e: -(len(e.context_ids) + len(e.response_ids)))
    batch: list[Example] = []
    for e in order:
        n = len(e.context_ids) + len(e.response_ids)
        width = max([n] + [len(b.context_ids) + len(b.response_ids) for b in batch[:1]])
        if batch and (len(batch) >= batch_size or (max_batch_tokens and width * (len(batch) + 1) > max_batch_tokens)):
            yield batch
            batch = []
        batch.append(e)
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------------------
# Pairing variants with targets
# ----------------------------------------------------------------------------------------------------
def pair_variants_with_targets(
    variants: Sequence[dict],
    targets: Sequence[dict],
    *,
    self_target_only: bool,
    condition_filter: Sequence[str] | None = None,
    target_type_filter: Sequence[str] | None = None,
    max_examples: int | None = None,
) -> list[tuple[dict, dict]]:
    """(variant, target) pairs: each variant with its own response (``self_target_only``, joined on
    ``response_id``) or with every target of its prompt."""
    if condition_filter:
        wanted = set(condition_filter)
        unknown = wanted - {v["condition"] for v in variants}
        if unknown:
            raise ValueError(f"--condition-filter: no variant has condition(s) {sorted(unknown)}")
        variants = [v for v in variants if v["condition"] in wanted]
    if target_type_filter:
        targets = [t for t in targets if t.get("target_type", "self_response") in set(target_type_filter)]
    pairs: list[tuple[dict, dict]] = []
    if self_target_only:
        by_id = {t.get("response_id", t.get("target_id")): t for t in targets}
        for v in variants:
            t = by_id.get(v["response_id"])
            if t is not None:
                pairs.append((v, t))
    else:
        by_prompt: dict[str, list[dict]] = {}
        for t in targets:
            by_prompt.setdefault(t["prompt_id"], []).append(t)
        for v in variants:
            pairs.extend((v, t) for t in by_prompt.get(v["prompt_id"], []))
    if max_examples is not None:
        pairs = pairs[: max(0, int(max_examples))]
    return pairs


def score_pairs(
    model,
    tokenizer,
    pairs: Sequence[tuple[dict, dict]],
    *,
    device: torch.device,
    raw_text: bool = False,
    max_model_len: int = 8192,
    batch_size: int = 8,
    max_batch_tokens: int | None = None,
    append_eos: bool = True,
    chat_template_kwargs: dict | None = None,
    teacher_model: str = "",
    max_response_length: int | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Score every pair; returns (rows in pair order, summary)."""
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    examples: list[Example] = []
    skipped = 0
    for key, (variant, target) in enumerate(pairs):
        e = encode_example(
            tokenizer,
            variant,
            target,
            raw_text=raw_text,
            max_model_len=max_model_len,
            append_eos=append_eos,
            chat_template_kwargs=chat_template_kwargs,
            max_response_length=max_response_length,
            key=key,
        )
        if e is None:
            skipped += 1
            continue
        examples.append(e)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    log_probs: dict[int, torch.Tensor] = {}
    start = time.time()
    batches = list(_batches(examples, batch_size, max_batch_tokens))
    for n, batch in enumerate(batches, start=1):
        for e, lp in zip(batch, response_log_probs(model, batch, pad_id, device)):
            log_probs[e.key] = lp
        if progress and (n % 20 == 0 or n == len(batches)):
            print(
                f"[score] {n}/{len(batches)} batches, {sum(len(b) for b in batches[:n])}/{len(examples)} examples, "
                f"{time.time() - start:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    rows = []
    by_key = {e.key: e for e in examples}
    for key, (variant, target) in enumerate(pairs):
        e = by_key.get(key)
        if e is None:
            continue
        lp = log_probs[key]
        total = float(lp.sum()) if lp.numel() else 0.0
        mean = float(lp.mean()) if lp.numel() else 0.0
        rows.append(
            {
                "variant_id": variant["variant_id"],
                "target_id": target.get("target_id", target.get("response_id")),
                "condition": variant["condition"],
                "target_type": target.get("target_type", "self_response"),
                "prompt_id": variant["prompt_id"],
                "response_id": target.get("source_response_id", target.get("response_id")),
                "context_response_id": variant["response_id"],
                "source_model": target.get("source_model", "student_rollout"),
                "teacher_model": teacher_model,
                "score_format": e.score_format,
                "sections_used": variant.get("sections_used", {}),
                "required_sections": variant.get("required_sections"),
                "effective": variant.get("effective"),
                "variant_spec": variant.get("variant_spec", {}),
                "teacher_score": mean,
                "teacher_avg_token_logprob": mean,
                "teacher_seq_logprob": total,
                "teacher_response_len": len(e.response_ids),
                "teacher_prompt_len": len(e.context_ids),
                "teacher_prompt_len_full": e.prompt_len_full,
                "teacher_prompt_truncated": e.dropped > 0,
                "teacher_prompt_dropped_tokens": e.dropped,
                "response_appended_eos": e.appended_eos,
                "reward": target.get("reward"),
                "success": bool(target["success"]),
                "difficulty_bucket": target.get("difficulty_bucket", variant.get("difficulty_bucket", "unknown")),
            }
        )
        if not math.isfinite(mean):
            raise FloatingPointError(f"non-finite teacher score for variant {variant['variant_id']}")
    matches = [e.base_input_match for e in examples if e.base_input_match is not None]
    summary = {
        "pairs": len(pairs),
        "scored": len(rows),
        "skipped_response_too_long": skipped,
        "truncated": sum(1 for r in rows if r["teacher_prompt_truncated"]),
        "batches": len(batches),
        "seconds": round(time.time() - start, 3),
        "score_formats": sorted({r["score_format"] for r in rows}),
        "base_context_equals_student_prompt": (sum(matches) / len(matches)) if matches else None,
        "max_model_len": max_model_len,
        "batch_size": batch_size,
        "device": str(device),
    }
    return rows, summary
