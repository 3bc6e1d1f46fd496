"""The ``hf`` rollout engine: transformers ``generate`` (KV cache) on an unsharded copy of the policy.

The copy lives on the same rank as the FSDP2 actor; ``load_weights`` refreshes it from the actor's
gathered weights before each generation, so every rank can generate its own prompts independently
(no lock-step across ranks, unlike generating through the sharded module).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    do_sample: bool = True
    max_new_tokens: int = 16


class HFRollout:
    def __init__(self, model, tokenizer, micro_batch_size: int = 256):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.micro_batch_size = micro_batch_size
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id

    @torch.no_grad()
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        # load_state_dict copies into the existing (compute-dtype) tensors, casting as it goes.
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # Tied embeddings appear once in a gathered state dict; everything else must match.
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"rollout weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams,
                 row_seeds: list[int]) -> dict[str, torch.Tensor]:
        """``n`` samples per prompt, interleaved (prompt 0's n samples first). Responses are right-padded to
        ``max_new_tokens``; the mask covers tokens up to and including the first EOS.

        Sampling is the Gumbel-max trick with one generator per sample (``row_seeds``, one per output
        row), so a sample depends on its own seed only, not on which rank or batch it was generated in:
        one worker and many workers produce the same rollouts.
        """
        device = next(self.model.parameters()).device
        input_ids = input_ids.to(device).repeat_interleave(params.n, dim=0)
        attention_mask = attention_mask.to(device).repeat_interleave(params.n, dim=0)
        if len(row_seeds) != input_ids.shape[0]:
            raise ValueError(f"need one seed per sample: {len(row_seeds)} seeds for {input_ids.shape[0]} samples")
        temperature = params.temperature if params.do_sample else 1.0
        responses, log_probs = [], []
        for start in range(0, input_ids.shape[0], self.micro_batch_size):
            ids = input_ids[start : start + self.micro_batch_size]
            mask = attention_mask[start : start + self.micro_batch_size]
            processors = []
            if params.do_sample:
                processors.append(SeededSampling(row_seeds[start : start + ids.shape[0]], params, device))
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens, do_sample=False,
                logits_processor=LogitsProcessorList(processors), eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id, return_dict_in_generate=True, output_logits=True,
                temperature=None, top_p=None, top_k=None,
            )
            new = out.sequences[:, ids.shape[1] :]
            # Log-probs under the temperature-scaled distribution, as the trainer computes them.
            logits = torch.stack(out.logits, dim=1).float() / temperature
            lp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
            responses.append(_pad_right(new, params.max_new_tokens, self.pad_id))
            log_probs.append(_pad_right(lp, params.max_new_tokens, 0.0))
        responses = torch.cat(responses).cpu()
        response_mask = _mask_through_first_eos(responses, self.eos_ids)
        rollout_log_probs = torch.cat(log_probs).cpu() * response_mask
        return {"responses": responses, "response_mask": response_mask, "rollout_log_probs": rollout_log_probs}


class SeededSampling(LogitsProcessor):
    """Temperature, top-k and top-p, then Gumbel noise from a per-row generator; greedy decoding of the
    result is an exact sample of the filtered, temperature-scaled distribution."""

    def __init__(self, row_seeds: list[int], params: SamplingParams, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in row_seeds]
        self.params = params

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.params.temperature
        if self.params.top_k and self.params.top_k > 0:
            kth = scores.topk(min(self.params.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.params.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            drop_sorted = cumulative - sorted_scores.softmax(-1) >= self.params.top_p  # keep the top token
            scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        uniform = torch.stack([
            torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in self.generators
        ]).clamp_(min=1e-20, max=1.0 - 1e-7)
        return scores - torch.log(-torch.log(uniform))


def _eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


def _pad_right(x: torch.Tensor, width: int, value) -> torch.Tensor:
    if x.shape[1] >= width:
        return x[:, :width]
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def _mask_through_first_eos(responses: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    is_eos = torch.zeros_like(responses, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= responses == eos
    # Tokens strictly after the first EOS are padding.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()
