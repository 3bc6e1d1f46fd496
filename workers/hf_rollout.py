"""The ``hf`` rollout engine: transformers ``generate`` (KV cache) on an unsharded copy of the policy.

The copy lives on the same rank as the FSDP2 actor; ``load_weights`` refreshes it from the actor's
gathered weights before each generation, so every rank can generate its own prompts independently
(no lock-step across ranks, unlike generating through the sharded module).

Memory scales with batch × length, never with the vocabulary: the sampling step (a logits processor)
chooses each row's token and records its log-prob as it goes, so no step's ``[B, V]`` logits outlive
that step (``output_logits`` would keep ``[B, T, V]``: 104 GB for 64 × 512 tokens of a 151,936-token
vocabulary).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from workers import model_utils
from workers.rollout_batch import SamplingParams

__all__ = ["HFRollout", "SamplingParams", "SeededSampler"]


class HFRollout:
    """``micro_batch_size`` rows at most per ``generate`` call, and (``max_token_len``,
    ``rollout.generate_max_token_len_per_gpu``) at most that many rows x (prompt + response) tokens, so the
    KV cache of a call, training or validation, stays within ``max_token_len`` x its bytes per token."""

    def __init__(
        self,
        model,
        tokenizer,
        micro_batch_size: int = 256,
        calculate_log_probs: bool = True,
        max_token_len: int | None = None,
    ):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.micro_batch_size = micro_batch_size
        self.max_token_len = max_token_len
        self.calculate_log_probs = calculate_log_probs
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(name, tensor)`` pairs (a state dict, or the bucketed stream of ``workers.weight_sync``)
        into the copy's own tensors, casting to its dtype; each tensor can be freed once copied."""
        targets = self.model.state_dict()  # shares storage with the parameters
        seen, unexpected = set(), []
        for name, tensor in weights.items() if isinstance(weights, dict) else weights:
            if name in targets:
                targets[name].copy_(tensor)
                seen.add(name)
            else:
                unexpected.append(name)
        # A tied LM head shares the embedding's storage: filled when the embedding is.
        missing = [k for k in targets if k not in seen and not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"rollout weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams, row_seeds: list[int]
    ) -> dict[str, torch.Tensor]:
        """``n`` samples per prompt, interleaved (prompt 0's n samples first). Responses are right-padded to
        ``max_new_tokens``; the mask covers tokens up to and including the first EOS.

        Each output row draws its randomness from its own generator (``row_seeds``), so a sample depends
        on its seed only, not on which rank or batch it was generated in: one worker and many workers
        produce the same rollouts. ``rollout_log_probs`` (unless ``calculate_log_probs`` is off) are the
        sampled tokens' log-probs under the temperature-scaled distribution, as the trainer computes them.
        """
        device = next(self.model.parameters()).device
        prompts, prompt_mask = input_ids.to(device), attention_mask.to(device)
        input_ids = prompts.repeat_interleave(params.n, dim=0)
        attention_mask = prompt_mask.repeat_interleave(params.n, dim=0)
        if len(row_seeds) != input_ids.shape[0]:
            raise ValueError(f"need one seed per sample: {len(row_seeds)} seeds for {input_ids.shape[0]} samples")
        responses, log_probs = [], []
        rows = self.rows_per_call(input_ids.shape[1], params.max_new_tokens)
        for start in range(0, input_ids.shape[0], rows):
            ids = input_ids[start : start + rows]
            mask = attention_mask[start : start + rows]
            sampler = SeededSampler(
                row_seeds[start : start + ids.shape[0]], params, device, keep_log_probs=self.calculate_log_probs
            )
            sequences = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([sampler]),
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
                **self._shared_prefill(prompts, prompt_mask, start, ids.shape[0], params.n),
            )
            responses.append(_pad_right(sequences[:, ids.shape[1] :], params.max_new_tokens, self.pad_id))
            if self.calculate_log_probs:
                log_probs.append(_pad_right(sampler.chosen_log_probs(), params.max_new_tokens, 0.0))
        responses = torch.cat(responses).cpu()
        response_mask = _mask_through_first_eos(responses, self.eos_ids)
        out = {"responses": responses, "response_mask": response_mask}
        if self.calculate_log_probs:
            out["rollout_log_probs"] = torch.cat(log_probs).cpu() * response_mask
        return out

    def rows_per_call(self, prompt_width: int, max_new_tokens: int) -> int:
        """Rows of one ``generate`` call: ``micro_batch_size``, fewer when their tokens would pass the budget
        (one row at least: a single sequence longer than the budget still runs, alone)."""
        if self.max_token_len is None:
            return self.micro_batch_size
        return max(1, min(self.micro_batch_size, self.max_token_len // (prompt_width + max_new_tokens)))

    def _shared_prefill(
        self, prompts: torch.Tensor, prompt_mask: torch.Tensor, first_row: int, rows: int, n: int
    ) -> dict:
        """``generate``'s cache argument for sample rows ``first_row .. first_row + rows``: their prompts'
        keys/values but for the last token, each distinct prompt run once, not once per sample. ``generate``
        then runs only the last prompt token and samples on (HF's cache-reuse path); causal attention makes
        the cached columns those of the full prefill. ``{}`` (the plain prefill) for one sample per prompt."""
        if n == 1 or prompts.shape[1] < 2:
            return {}
        first, last = first_row // n, (first_row + rows - 1) // n
        ids, mask = prompts[first : last + 1, :-1], prompt_mask[first : last + 1, :-1]
        position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate numbers them
        name = model_utils.cache_kwarg(self.model)
        cache = model_utils.new_cache(self.model)
        self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{name: cache},
        )
        cache.batch_select_indices(torch.arange(first_row, first_row + rows, device=prompts.device) // n - first)
        return {name: cache}


class SeededSampler(LogitsProcessor):
    """Chooses every row's next token and returns scores whose argmax is that choice, so ``generate``'s
    greedy search emits exactly the sampled tokens.

    Sampling is inverse-CDF: one uniform per row and step, drawn up front (on the CPU, so draws do not
    depend on the device) from the row's own generator (``max_new_tokens`` draws per row per ``generate``
    call), picks the token whose cumulative probability interval contains it — an exact sample of the
    temperature-scaled, top-k/top-p-filtered distribution.
    (Gumbel-max needs ``V`` uniforms per row and step: 82 s of a 64 × 128-token rollout at V = 151,936.)
    With ``do_sample=False`` the choice is the argmax.
    """

    def __init__(
        self, row_seeds: list[int], params: SamplingParams, device: torch.device, *, keep_log_probs: bool = True
    ):
        self.params = params
        self.temperature = params.temperature if params.do_sample else 1.0
        self.keep_log_probs = keep_log_probs
        self.filtered = bool(params.top_k and params.top_k > 0) or params.top_p < 1.0
        self.step = 0
        self._log_probs: list[torch.Tensor] = []
        self.uniforms = None
        if params.do_sample:
            draws = [
                torch.rand(
                    params.max_new_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(int(seed))
                )
                for seed in row_seeds
            ]
            self.uniforms = torch.stack(draws).to(device)  # [B, max_new_tokens]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        peak, top = logits.max(dim=-1, keepdim=True)
        # exp(logits - max) serves both the log-probs (its sum is the partition function) and, when no
        # top-k/top-p filter applies, the sampling weights: one pass over [B, V], made only if needed.
        weights = None
        if self.keep_log_probs or (self.uniforms is not None and not self.filtered):
            weights = (logits - peak).exp_()
        if self.uniforms is None:
            choice = top.squeeze(-1)
        else:
            kept = (_filter_top_k_top_p(logits, self.params) - peak).exp_() if self.filtered else weights
            choice = _inverse_cdf_sample(kept, self.uniforms[:, self.step])
        if self.keep_log_probs:
            log_partition = weights.sum(dim=-1, dtype=torch.float64).log().float() + peak.squeeze(-1)
            self._log_probs.append(logits.gather(-1, choice.unsqueeze(-1)).squeeze(-1) - log_partition)
        self.step += 1
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(-1, choice.unsqueeze(-1), 0.0)

    def chosen_log_probs(self) -> torch.Tensor:
        """``[B, steps]``: the log-prob of the token chosen at each step (rows past EOS are masked later)."""
        return torch.stack(self._log_probs, dim=1)


def _filter_top_k_top_p(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if params.top_k and params.top_k > 0:
        kth = logits.topk(min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= params.top_p  # always keeps the top token
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


_CDF_BLOCK = 256


def _inverse_cdf_sample(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row b takes the first token whose cumulative weight exceeds ``u_b`` × the row's total: token i is
    chosen with probability w_i / Σw, and a token of weight 0 never (its interval is empty).

    Two levels keep it to one pass over ``[B, V]``: float64 sums of blocks of ``_CDF_BLOCK`` tokens locate
    the block holding the target, then a cumulative sum inside that block alone locates the token.
    """
    rows, vocab = weights.shape
    full = vocab // _CDF_BLOCK * _CDF_BLOCK
    block_sums = weights[:, :full].view(rows, -1, _CDF_BLOCK).sum(dim=-1, dtype=torch.float64)  # a view: no copy
    if full < vocab:
        block_sums = torch.cat([block_sums, weights[:, full:].sum(dim=-1, keepdim=True, dtype=torch.float64)], 1)
    block_cdf = block_sums.cumsum_(dim=-1)  # [B, blocks]
    target = uniforms.to(torch.float64).unsqueeze(-1) * block_cdf[:, -1:]  # [B, 1], in [0, total)
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=block_cdf.shape[1] - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    tokens = block * _CDF_BLOCK + torch.arange(_CDF_BLOCK, device=weights.device)  # [B, _CDF_BLOCK]
    inside = tokens < vocab  # the last block may be short
    inner_weights = torch.where(
        inside,
        weights.gather(1, tokens.clamp(max=vocab - 1)),
        torch.zeros((), dtype=weights.dtype, device=weights.device),
    )
    inner_cdf = inner_weights.to(torch.float64).cumsum(dim=-1)
    offset = torch.searchsorted(inner_cdf, target - before, right=True).squeeze(-1)
    # Rounding can put the target a hair past the block's own sum: take its last token of weight > 0.
    last_positive = torch.where(inner_weights > 0, torch.arange(_CDF_BLOCK, device=weights.device), -1).amax(-1)
    offset = torch.minimum(offset, last_positive)
    return tokens.gather(1, offset.unsqueeze(-1)).squeeze(-1)


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
