"""One rank of the actor/rollout/teacher group: FSDP2 actor, teacher, HF rollout copy, checkpoints."""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.distributed as dist

from mopd.common.errors import ConfigError
from mopd.core.teacher import ema_update_
from workers import memory, model_utils, packed_attention, sharded_load, shared_prefix, update_health
from workers.actor import (
    DISTILLATION_MODES,
    PREFERENCE_MODES,
    Normalizers,
    TeacherForward,
    backward_mini_batch,
    loss_normalizer_counts,
)
from workers.batch import index_batch, sequence_lengths, slice_batch, to_device, token_budget_partition
from workers.config import WorkerConfig
from workers.dispatch import Dispatch, register
from workers.hf_rollout import HFRollout
from workers.optimizer import build_optimizer
from workers.rollout_batch import RolloutBatch, joined
from workers.seeding import derive_seed, rng_state, seed_everything, set_rng_state, shuffled_groups


class ActorRolloutRefWorker:
    def __init__(self, config: WorkerConfig, rank: int, world_size: int):
        self.config = config  # its typed section (workers/config.py)
        self.rank, self.world_size = rank, world_size
        self.master: tuple[str, int] | None = None

    def free_address(self) -> tuple[str, int]:
        """This node's address and a free port: the process-group rendezvous (asked of rank 0)."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if self.world_size == 1:
            return "127.0.0.1", port
        try:
            import ray

            return ray.util.get_node_ip_address(), port
        except Exception:  # not inside Ray
            return socket.gethostbyname(socket.gethostname()), port

    def set_master(self, address: str, port: int) -> None:
        self.master = (address, port)

    # ------------------------------------------------------------------------------------------
    @register(Dispatch.ONE_TO_ALL)
    def init_model(self, total_optimizer_steps: int) -> dict:
        """Build the models; ``total_optimizer_steps`` (the driver's count of updates) is the LR schedule's horizon."""
        arr, run = self.config.actor_rollout_ref, self.config.rank
        model_cfg, actor_cfg = arr.model, arr.actor
        self.device = model_utils.pick_device(run.device, getattr(self, "device_index", self.rank))
        if self.device.type == "cpu":
            threads = run.num_threads or max(1, (os.cpu_count() or 1) // self.world_size)
            torch.set_num_threads(threads)
        model_utils.init_distributed(self.rank, self.world_size, *self.master, self.device)
        seed_everything(run.seed)  # identical initial weights on every rank
        self.dtype = model_utils.pick_dtype(model_cfg.dtype, self.device)
        path = model_utils.resolve_model_path(model_cfg.path)
        self.tokenizer = model_utils.load_tokenizer(model_cfg.tokenizer_path or path, model_cfg.trust_remote_code)
        self.remove_padding = model_cfg.use_remove_padding
        # Packing under sdpa: per-sequence attention instead of a [T, T] mask (workers/packed_attention.py).
        attn = packed_attention.implementation(model_cfg.attn_implementation, self.remove_padding)
        if attn == packed_attention.PACKED_SDPA:  # the varlen kernel's self-check now, not in the first forward
            packed_attention.check_at_init(self.device, self.dtype)
        self.loss_mode = actor_cfg.policy_loss.loss_mode
        if actor_cfg.strategy != "fsdp2":  # the one sharding strategy here; FSDP1 ("fsdp") is not offered
            raise ValueError(f"actor_rollout_ref.actor.strategy={actor_cfg.strategy}: only fsdp2 is implemented")
        self.sd_cfg = actor_cfg.self_distillation if self.loss_mode in DISTILLATION_MODES else None

        self.student_shared_prefix = _student_shares_prefixes(
            actor_cfg.shared_prefix, self.world_size, model_cfg.enable_gradient_checkpointing, self.rank
        )
        # Built on the meta device, sharded, each rank reading its rows of the safetensors files: never a full
        # float32 model on a device (workers/sharded_load.py).
        shard = dict(
            device=self.device,
            rank=self.rank,
            world_size=self.world_size,
            compute_dtype=self.dtype,
            attn_implementation=attn,
            trust_remote_code=model_cfg.trust_remote_code,
        )
        self.actor = sharded_load.build_sharded(
            path, gradient_checkpointing=model_cfg.enable_gradient_checkpointing, **shard
        )
        rollout_cfg = arr.rollout
        # hf: an unsharded copy in the compute dtype, the only full copy on the device, filled by the weight
        # sync before each generation (generation never packs: the requested attention); vllm builds its own.
        rollout_copy = (
            sharded_load.build_engine_copy(
                path,
                dtype=self.dtype,
                device=self.device,
                attn_implementation=model_cfg.attn_implementation,
                trust_remote_code=model_cfg.trust_remote_code,
            )
            if rollout_cfg.name == "hf"
            else None
        )
        self.optimizer, self.scheduler = build_optimizer(self.actor, actor_cfg.optim, total_optimizer_steps)
        self.model_path = path
        if rollout_cfg.name == "vllm":
            from workers.vllm_rollout import VLLMRollout

            self.rollout = VLLMRollout(
                path,
                self.tokenizer,
                rollout_cfg,
                tokenizer_path=model_cfg.tokenizer_path,
                dtype=self.dtype,
                device=self.device,
                rank=self.rank,
                world_size=self.world_size,
                seed=run.seed,
                max_model_len=run.max_prompt_length + run.max_response_length,
                trust_remote_code=model_cfg.trust_remote_code,
            )
        else:
            self.rollout = HFRollout(
                rollout_copy,
                self.tokenizer,
                rollout_cfg.micro_batch_size,
                calculate_log_probs=rollout_cfg.calculate_log_probs,
                max_token_len=rollout_cfg.generate_max_token_len_per_gpu,
            )

        self.teacher_module, self.teacher, self.ref_module = None, None, None
        ref_path = model_utils.resolve_model_path(arr.ref.model.path)
        # The frozen initial model: the teacher (MOPD/SDPO), DPO's reference, or the reference of a KL penalty.
        if self.sd_cfg is not None or self.loss_mode == "dpo" or run.needs_reference:
            frozen = sharded_load.build_sharded(
                ref_path or path,
                frozen=True,
                **shard,
                flag=("actor_rollout_ref.ref.model.path" if ref_path else "actor_rollout_ref.model.path"),
            ).eval()
            if ref_path:
                _check_same_vocabulary(frozen, self.actor, ref_path, path, self.tokenizer)
            if self.sd_cfg is None:
                self.ref_module = frozen
            else:
                self.teacher_module = frozen
                mode = self.sd_cfg.teacher_regularization
                self.teacher = TeacherForward(
                    frozen,
                    mode,
                    self.sd_cfg.teacher_update_rate,
                    self.actor,
                    self.remove_padding,
                    arr.ref.shared_prefix,
                )
        model_utils.release_cached_memory(self.device)  # the loading transients: free before the first wake
        n_params = sum(p.numel() for p in self.actor.parameters())
        return {"params": n_params, "device": str(self.device), "rank": self.rank}

    # ------------------------------------------------------------------------------------------
    @register(Dispatch.ONE_TO_ALL)
    def sync_rollout_weights(self) -> None:
        """Refresh this rank's rollout copy from the FSDP2 actor (a collective across ranks)."""
        from workers.weight_sync import iter_full_parameters

        # Bucket by bucket, cast to the compute dtype before the gather, straight into the engine's
        # weights: never a second full copy of the model on the device. The update's cached blocks go back
        # to the device first: vLLM's wake allocates its weights and KV cache outside torch's cache.
        model_utils.release_cached_memory(self.device)
        self.rollout.load_weights(iter_full_parameters(self.actor, self.dtype))

    @register(Dispatch.DP_COMPUTE)
    def generate(self, batch: RolloutBatch) -> RolloutBatch:
        """The prompts' ``n`` samples each, as the next stages use them: prompt + response joined, with
        their positions (``workers.rollout_batch.joined``)."""
        batch.check("prompts")
        meta = batch.meta
        params = meta.sampling
        seed = self.config.rank.seed
        # One seed per sample from (run seed, step, prompt uid, sample index): rank-independent.
        row_seeds = [derive_seed(seed, meta.step, j, f"{meta.tag}:{uid}") for uid in batch.uid for j in range(params.n)]
        out = self.rollout.generate(batch.input_ids, batch.attention_mask, params, row_seeds)
        model_utils.release_cached_memory(self.device)  # the KV cache's blocks, before the training phases
        return joined(batch, out)

    @register(Dispatch.DP_COMPUTE)
    @torch.no_grad()
    def compute_log_prob(self, batch: RolloutBatch) -> dict:
        """π_old: the actor's log-probs of its responses before this step's updates."""
        return {"old_log_probs": self._response_log_probs(self.actor, batch)}

    @register(Dispatch.DP_COMPUTE)
    @torch.no_grad()
    def compute_ref_log_prob(self, batch: RolloutBatch) -> dict:
        """The frozen reference's log-probs of the responses (the KL penalty's ``ref``)."""
        if self.ref_module is None:
            raise RuntimeError(
                "compute_ref_log_prob: no reference model (actor.use_kl_loss or algorithm.use_kl_in_reward loads one)"
            )
        return {"ref_log_probs": self._response_log_probs(self.ref_module, batch)}

    def _response_log_probs(self, module, batch: RolloutBatch) -> torch.Tensor:
        from workers.forward import response_log_probs

        temperature = batch.meta.temperature
        out = torch.zeros(batch.responses.shape, dtype=torch.float32)
        head = functools.partial(shared_prefix.response_head, share=self.student_shared_prefix)
        group = self.config.actor_rollout_ref.rollout.n if self.student_shared_prefix else 1
        for index in self._log_prob_parts(batch, "attention_mask", group):
            mb = to_device(index_batch(batch, index), self.device)
            out[index] = (
                response_log_probs(
                    module,
                    mb.input_ids,
                    mb.attention_mask,
                    mb.position_ids,
                    mb.responses,
                    mb.response_mask,
                    temperature,
                    self.remove_padding,
                    head,
                )
                .float()
                .cpu()
            )
        model_utils.release_cached_memory(self.device)
        return out

    # ------------------------------------------------------------------------------------------
    @register(Dispatch.DP_COMPUTE)
    def update_actor(self, batch: RolloutBatch) -> dict:
        """Mini-batches in order (shuffled if configured), micro-batches with gradient accumulation,
        one optimizer step per mini-batch, ``ppo_epochs`` passes. Returns per-step metric lists."""
        cfg = self.config.actor_rollout_ref
        actor_cfg = cfg.actor
        batch.check("generate")  # what every loss reads, and every field's shape (the driver checked the rest)
        meta = batch.meta
        n = cfg.rollout.n
        local = batch.responses.shape[0]
        mini = actor_cfg.ppo_mini_batch_size * n // self.world_size
        micro = actor_cfg.ppo_micro_batch_size_per_gpu  # validated: divides the per-device mini-batch
        metrics: dict[str, list[float]] = {}
        self.actor.train()
        generator = torch.Generator().manual_seed(derive_seed(self.config.rank.seed, meta.step, 0, "shuffle"))
        # DPO/SimPO pair the rollouts of one prompt within a micro-batch, and the shared-prefix forwards
        # run a prompt's rollouts together: shuffle and partition whole groups of n.
        shared = (
            self.student_shared_prefix or (self.teacher is not None and self.teacher.shared_prefix)
        ) and mini % n == 0
        group = n if self.loss_mode in PREFERENCE_MODES or shared else 1
        loss_kwargs = dict(
            loss_mode=self.loss_mode,
            actor_cfg=actor_cfg,
            sd_cfg=self.sd_cfg,
            teacher=self.teacher,
            ref_module=self.ref_module,
            temperature=meta.temperature,
            horizon=self.config.rank.max_response_length,
            entropy_coeff=actor_cfg.entropy_coeff,
            remove_padding=self.remove_padding,
            student_shared_prefix=self.student_shared_prefix,
        )
        finite_steps, skipped = 0, []
        offload = actor_cfg.fsdp_config.optimizer_offload
        if offload:
            memory.move_optimizer_state(self.optimizer, self.device)
        for _epoch in range(actor_cfg.ppo_epochs):
            order = shuffled_groups(local, group, generator) if actor_cfg.shuffle else torch.arange(local)
            for m_start in range(0, local, mini):
                mini_batch = index_batch(batch, order[m_start : m_start + mini])
                if self.teacher is not None:
                    start = time.perf_counter()
                    mini_batch.teacher_hidden, tokens_run = self._teacher_pass(mini_batch, group)
                    if self.device.type == "cuda":  # the pass is queued, not done, until the device syncs
                        torch.cuda.synchronize(self.device)
                    metrics.setdefault("perf/teacher_pass_s", []).append(time.perf_counter() - start)
                    metrics.setdefault("perf/teacher_tokens_run", []).append(float(tokens_run))
                normalizers = self._global_normalizers(mini_batch) if actor_cfg.global_token_normalization else None
                self.optimizer.zero_grad(set_to_none=True)
                micro_batches = self._micro_batches(mini_batch, micro, group)
                mini_loss, mb_metrics = backward_mini_batch(
                    micro_batches, self.actor, normalizers, self.device, **loss_kwargs
                )
                for k, v in mb_metrics.items():
                    metrics.setdefault(k, []).extend(v)
                metrics.setdefault("actor/loss", []).append(mini_loss)
                grad_norm = self._clip_grad(actor_cfg.grad_clip)
                cause = update_health.skip_cause(mini_loss, grad_norm, self.device, self.world_size)
                if cause is None:
                    self.optimizer.step()
                    finite_steps += 1
                else:  # counted and reported by the driver (trainer.max_consecutive_skipped_updates)
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped.append(cause)
                self.scheduler.step()
                metrics.setdefault("actor/grad_norm", []).append(grad_norm)
                metrics.setdefault("actor/lr", []).append(self.scheduler.get_last_lr()[0])
        self._finite_steps = finite_steps
        if finite_steps and not update_health.weights_finite(self.actor, self.device, self.world_size):
            skipped.append(update_health.NONFINITE_WEIGHTS)
        metrics["actor/skipped_updates"] = [float(len(skipped))]
        # Gradients are not needed until the next update's backward: generation and the no-grad passes
        # should not hold 4 bytes per parameter shard for them.
        self.optimizer.zero_grad(set_to_none=True)
        if offload:
            memory.move_optimizer_state(self.optimizer, torch.device("cpu"))
        model_utils.release_cached_memory(self.device)
        return {"metrics": [metrics], "skipped_updates": [skipped]}

    @torch.no_grad()
    def _teacher_pass(self, mini_batch: RolloutBatch, group: int) -> tuple[torch.Tensor, int]:
        """The teacher's head inputs for a mini-batch ``[rows, R, H]`` on the device, and the tokens it ran; in
        chunks of ``rollout.log_prob_micro_batch_size_per_gpu`` sequences (``use_dynamic_bsz``: teacher tokens within
        ``log_prob_max_token_len_per_gpu``), whole prompt groups together. One pass before the micro-batches:
        fewer, larger forwards than one per micro-batch, and more rows to share prompt prefixes between.
        The student's weights do not change within a mini-batch, so trust-region mixing is the same."""
        rows = mini_batch.responses.shape[0]
        parts = self._log_prob_parts(mini_batch, "teacher_attention_mask", group)

        def most_over_ranks(calls: int) -> int:
            if self.world_size == 1:
                return calls
            most = model_utils.device_tensor([calls], self.device, torch.int64)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            return int(most.item())

        return self.teacher.mini_batch_hidden(
            [index_batch(mini_batch, index) for index in parts], parts, rows, self.device, most_over_ranks
        )

    def _log_prob_parts(self, batch: RolloutBatch, mask_key: str, group: int) -> list[list[int]]:
        """Row indices of each no-grad forward: ``rollout.log_prob_micro_batch_size_per_gpu`` sequences
        (rounded to whole groups of ``group``), or (``use_dynamic_bsz``) ``mask_key`` tokens within
        ``rollout.log_prob_max_token_len_per_gpu``, as many parts on every rank."""
        rollout = self.config.actor_rollout_ref.rollout
        if self.config.actor_rollout_ref.actor.use_dynamic_bsz:
            return self._token_budget_parts(
                sequence_lengths(batch, mask_key), rollout.log_prob_max_token_len_per_gpu, group
            )
        rows = batch.responses.shape[0]
        size = max(rollout.log_prob_micro_batch_size_per_gpu // group, 1) * group
        return [list(range(start, min(start + size, rows))) for start in range(0, rows, size)]

    def _micro_batches(self, mini_batch: RolloutBatch, size: int, group: int) -> list[RolloutBatch]:
        """Fixed-size slices, or (``use_dynamic_bsz``) token-budget groups: student and teacher tokens
        each within ``ppo_max_token_len_per_gpu``, the same number of micro-batches on every rank."""
        actor_cfg = self.config.actor_rollout_ref.actor
        rows = mini_batch.responses.shape[0]
        if not actor_cfg.use_dynamic_bsz:
            return [slice_batch(mini_batch, u, u + size) for u in range(0, rows, size)]
        lengths = sequence_lengths(mini_batch, "attention_mask", "teacher_attention_mask")
        parts = self._token_budget_parts(lengths, actor_cfg.ppo_max_token_len_per_gpu, group)
        return [index_batch(mini_batch, index) for index in parts]

    def _token_budget_parts(self, lengths, budget: int, group: int) -> list[list[int]]:
        local = len(token_budget_partition(lengths, budget, group=group))
        count = model_utils.device_tensor([local], self.device, torch.int64)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)  # every rank runs as many forwards (FSDP2 collectives)
        return token_budget_partition(lengths, budget, group=group, parts=int(count.item()))

    def _global_normalizers(self, mini_batch: RolloutBatch) -> Normalizers:
        """The mini-batch's loss and entropy counts summed over ranks (one collective)."""
        counts = model_utils.device_tensor(
            loss_normalizer_counts(mini_batch, self.loss_mode, self.config.actor_rollout_ref.actor), self.device
        )
        dist.all_reduce(counts)
        # FSDP2 averages gradients over ranks, so each rank's loss is scaled by world size.
        loss, entropy = (max(c, 1.0) / self.world_size for c in counts.tolist())
        return Normalizers(loss=loss, entropy=entropy)

    def _clip_grad(self, max_norm) -> float:
        params = [p for p in self.actor.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm.item())

    @register(Dispatch.ONE_TO_ALL)
    def update_teacher(self) -> dict:
        """EMA teacher: θ_T ← (1−r)θ_T + rθ_S once per step, if the step made any finite update."""
        if self.teacher is None or self.teacher.mode != "ema" or self.sd_cfg.teacher_update_rate == 0:
            return {"updated": False}
        if not getattr(self, "_finite_steps", 0):
            return {"updated": False}
        # A forward without backward leaves FSDP2's root parameters unsharded; compare shards to shards.
        model_utils.reshard(self.teacher_module)
        model_utils.reshard(self.actor)
        ema_update_(
            model_utils.local_tensors(self.teacher_module.parameters()),
            model_utils.local_tensors(self.actor.parameters()),
            self.sd_cfg.teacher_update_rate,
        )
        return {"updated": True}

    # ------------------------------------------------------------------------------------------
    def _sharded_state(self) -> dict:
        """Model, optimizer and teacher state as DCP-ready sharded dicts (parameters resharded first)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        for module in (self.actor, self.teacher_module, self.ref_module):
            model_utils.reshard(module)
        model_sd, optim_sd = get_state_dict(self.actor, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        if self.teacher_module is not None:
            state["teacher"] = self.teacher_module.state_dict()
        return state

    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, directory: str) -> None:
        """Sharded model/optimizer/teacher state via torch.distributed.checkpoint + per-rank RNG and
        scheduler state, into ``directory`` (a temp dir the driver commits atomically)."""
        import torch.distributed.checkpoint as dcp

        state = self._sharded_state()
        dcp.save(state, checkpoint_id=os.path.join(directory, "sharded"))
        torch.save(
            {"scheduler": self.scheduler.state_dict(), "rng": rng_state()},
            os.path.join(directory, f"extra_rank{self.rank}.pt"),
        )
        dist.barrier()

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._sharded_state()
        dcp.load(state, checkpoint_id=os.path.join(directory, "sharded"))
        set_state_dict(self.actor, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        if self.teacher_module is not None:
            self.teacher_module.load_state_dict(state["teacher"])
        extra = torch.load(os.path.join(directory, f"extra_rank{self.rank}.pt"), weights_only=False)
        self.scheduler.load_state_dict(extra["scheduler"])
        set_rng_state(extra["rng"])
        dist.barrier()

    @register(Dispatch.ONE_TO_ALL)
    def export_hf(self, directory: str) -> None:
        """An HF-format copy that ``AutoModelForCausalLM.from_pretrained`` loads (rank 0 writes)."""
        state = model_utils.full_state_dict(self.actor, rank0_only=True)
        if self.rank == 0:
            # The architecture and config come from a weightless (meta) model of the same config: no second
            # float32 model loaded at each checkpoint; the weights written are the float32 masters (``state``).
            holder = sharded_load.export_holder(self.model_path, self.config.actor_rollout_ref.model.trust_remote_code)
            holder.save_pretrained(directory, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)
        dist.barrier()

    @register(Dispatch.ONE_TO_ALL)
    def peak_memory_gb(self) -> dict:
        """This rank's peak memory since the last call (then reset): device memory allocated by torch
        on CUDA, the process's resident set on CPU."""
        return model_utils.read_and_reset_peak_memory(self.device)

    @register(Dispatch.ONE_TO_ALL)
    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
def _student_shares_prefixes(requested: bool, world_size: int, checkpointing: bool, rank: int) -> bool:
    """Whether the actor's forwards run each prompt once for its rollouts (``actor.shared_prefix``).

    Not on several ranks: the number of forwards follows each rank's data, and FSDP2's backward would then
    pair different ranks' all-gathers and reduce-scatters. Not under gradient checkpointing: transformers
    drops the KV cache the rollouts read their prompt from."""
    why = (
        "several ranks (FSDP2 needs as many forwards on each)"
        if world_size > 1
        else "actor_rollout_ref.model.enable_gradient_checkpointing=true (it drops the KV cache)"
        if checkpointing
        else None
    )
    if requested and why and rank == 0:
        print(
            f"[mopd] actor_rollout_ref.actor.shared_prefix: the plain forward runs instead, because of {why}",
            flush=True,
        )
    return requested and why is None


def _check_same_vocabulary(teacher, student, teacher_path, student_path, tokenizer) -> None:
    from transformers import AutoTokenizer

    t_vocab, s_vocab = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    teacher_tok = AutoTokenizer.from_pretrained(teacher_path)
    if t_vocab != s_vocab or teacher_tok.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"actor_rollout_ref.ref.model.path={teacher_path}: the teacher's vocabulary ({t_vocab} logits, "
            f"{len(teacher_tok)} tokens) differs from the student's {student_path} ({s_vocab} logits, "
            f"{len(tokenizer)} tokens); distillation needs the same tokenizer and vocabulary"
        )
