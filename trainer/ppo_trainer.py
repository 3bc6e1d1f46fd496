"""The single-controller driver: one ``fit()`` loop for MOPD, SDPO, GRPO and the preference losses.

The loop follows docs/architecture.md ("The fit loop"); each stage is timed as ``timing_s/<stage>``.
Workers (Ray actors or one local object) hold the models; the driver holds the data, the verifier, peer
selection (with a seeded generator) and the tokenized teacher inputs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mopd.common.errors import PreemptedError, WorkerDiedError
from mopd.common.models import load_tokenizer, resolve_model_path
from mopd.core.kl import uses_reference_kl
from mopd.core.loss_modes import DISTILLATION_MODES
from mopd.core.losses import rollout_is_weights
from mopd.core.peers import Rollout, UidSuccessTracker, select_peers
from mopd.core.reprompt import build_teacher_inputs, compute_step_ids
from trainer import rollout_io
from trainer.advantage_stage import AdvantageStage
from trainer.config_sections import MOPDConfig
from trainer.config_sections import load as load_config
from trainer.fit_helpers import (
    data_files,
    due,
    make_balancer,
    make_group,
    peak_memory_metrics,
    reduce_worker_metrics,
    timer,
    valid_tokens,
)
from trainer.preemption import PreemptionHandler, stop_in
from trainer.prompt_dataset import PromptBatch
from trainer.reward_health import RewardHealth
from trainer.update_guard import SkippedUpdateGuard
from workers.batch import truncate_batch
from workers.rollout_batch import RolloutBatch, SamplingParams, StepMeta


class Trainer:
    def __init__(self, config: MOPDConfig | Mapping):
        from mopd.rewards import RewardScorer, load_reward_fn
        from trainer.checkpoint import CheckpointManager
        from trainer.checkpoint_save import CheckpointWriter
        from trainer.disk_space import estimate_checkpoint_bytes
        from trainer.prompt_dataset import PromptDataset, StatefulSampler
        from trainer.tracking import Tracking

        self.config = cfg = load_config(config)  # the typed tree (trainer/config_sections.py)
        data, trainer = cfg.data, cfg.trainer
        actor = cfg.actor_rollout_ref.actor
        self.loss_mode = actor.policy_loss.loss_mode
        self.sd_cfg = actor.self_distillation
        model_path = resolve_model_path(cfg.actor_rollout_ref.model.path)
        self.tokenizer = load_tokenizer(
            cfg.actor_rollout_ref.model.tokenizer_path or model_path,
            cfg.actor_rollout_ref.model.trust_remote_code,
        )
        chat_kwargs = dict(data.apply_chat_template_kwargs)
        self.chat_kwargs = chat_kwargs
        dataset_args = dict(
            max_prompt_length=data.max_prompt_length,
            filter_overlong_prompts=data.filter_overlong_prompts,
            apply_chat_template_kwargs=chat_kwargs,
        )
        # Summaries on: every training prompt asks the policy for a <summary> (validation prompts do not).
        instruction = self.sd_cfg.summary_instruction if self.sd_cfg.summarize_solutions else None
        self.train_set = PromptDataset(
            data_files(data.train_files, "train"),
            self.tokenizer,
            max_samples=data.max_samples,
            key="data.train_files",
            instruction=instruction,
            **dataset_args,
        )
        self.val_set = (
            PromptDataset(data_files(data.val_files, "test"), self.tokenizer, key="data.val_files", **dataset_args)
            if data.val_files
            else None
        )
        self.sampler = StatefulSampler(len(self.train_set), data.train_batch_size, shuffle=data.shuffle, seed=data.seed)
        per_epoch = self.sampler.batches_per_epoch
        self.total_steps = trainer.total_training_steps or per_epoch * trainer.total_epochs
        updates_per_step = data.train_batch_size // actor.ppo_mini_batch_size * actor.ppo_epochs
        self.off_policy = updates_per_step > 1
        self.needs_ref = uses_reference_kl(cfg)
        self.advantage = AdvantageStage(cfg.algorithm)
        self.success_threshold = cfg.reward.success_threshold
        rc = cfg.algorithm.rollout_correction
        self.rollout_is = rc.rollout_is
        self.reward_fn = load_reward_fn(cfg.custom_reward_function.path, cfg.custom_reward_function.name)
        self.scorer = RewardScorer(self.reward_fn, num_workers=cfg.reward.num_workers)
        self.reward_health = RewardHealth(cfg.custom_reward_function.path or "the built-in verifiers")
        self.peer_rng = random.Random(trainer.seed)
        self.uid_tracker = UidSuccessTracker()
        self.output_dir = Path(trainer.default_local_dir)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", trainer.max_actor_ckpt_to_keep)
        self.tracker = Tracking(
            trainer.project_name,
            trainer.experiment_name,
            trainer.logger,
            cfg.to_dict(),
            str(self.output_dir),
            total_steps=self.total_steps,
        )
        self.group = make_group(cfg)
        self.balancer = make_balancer(cfg, self.loss_mode, self.group.world_size)
        info = self.group.init_model(self.total_steps * updates_per_step)  # the LR schedule's horizon
        print(
            f"[mopd] {len(self.train_set)} training prompts ({self.train_set.num_filtered} filtered), "
            f"{self.total_steps} steps, loss_mode={self.loss_mode}, {self.group.world_size} worker(s) on "
            f"{info[0]['device']}, {info[0]['params'] / 1e6:.2f} M parameters",
            flush=True,
        )
        self.global_step = 0
        # Faults of a long run (docs/faults.md): preemption signals, a full disk, a model that has died.
        self.preemption = PreemptionHandler(trainer.preemption_grace_s)
        self.ckpt_writer = CheckpointWriter(
            self.checkpoints,
            estimate_checkpoint_bytes(info[0]["params"], self.loss_mode in DISTILLATION_MODES),
            critical=self.preemption.critical,
        )
        self.update_guard = SkippedUpdateGuard(trainer.max_consecutive_skipped_updates, actor.optim.lr)

    # ------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        self.preemption.install()
        try:
            return self._fit()
        except WorkerDiedError as err:
            raise WorkerDiedError(f"{err}; {self._resume_hint()}", rank=err.rank) from None
        except BaseException as err:  # a second signal, the grace deadline, Ctrl-C: say where the run resumes from
            stop = stop_in(err)
            if stop is None:
                raise
            what = "interrupted (Ctrl-C)" if isinstance(stop, KeyboardInterrupt) else str(stop)
            raise PreemptedError(
                f"{what} during step {self.global_step}; {self._resume_hint()}",
                exit_code=getattr(stop, "exit_code", 130),
                immediate=True,
            ) from None
        finally:
            self.preemption.uninstall()

    def _resume_hint(self) -> str:
        latest = self.checkpoints.latest()
        if latest is None:
            return (
                "no complete checkpoint to resume from (trainer.save_freq=N saves one every N steps); "
                "rerun the same command to start again"
            )
        return (
            f"last complete checkpoint: step {latest[0]} at {latest[1]}; resume: rerun the same command "
            f"with trainer.resume_mode=auto trainer.default_local_dir={self.output_dir}"
        )

    def _fit(self) -> dict:
        trainer = self.config.trainer
        self.global_step = self._load_checkpoint()
        last_val: dict = {}
        first_val: tuple[int, dict] | None = None
        started = time.perf_counter()
        if self.val_set is not None and trainer.val_before_train and self.global_step == 0:
            last_val = self._validate()
            first_val = (0, last_val)
            self.tracker.log(last_val, step=0)
        batches = self._batches()
        while self.global_step < self.total_steps:
            self.global_step += 1
            step = self.global_step
            metrics, timing = {}, {}
            with timer("step", timing):
                items = next(batches)
                self.group.peak_memory_gb()  # reset: the next reading covers generation only
                with timer("gen", timing):
                    batch = self._generate(items, step, timing=timing)
                metrics.update(peak_memory_metrics("gen", self.group.peak_memory_gb()))
                with timer("reward", timing):
                    self._score(batch, items, metrics)
                batch.check("reward")
                with timer("old_log_prob", timing):
                    if self._maybe_old_log_probs(batch):
                        batch.check("old_log_prob")
                if self.needs_ref:
                    with timer("ref", timing):
                        out = self.balancer.call(self.group.compute_ref_log_prob, batch)
                        batch.ref_log_probs = out["ref_log_probs"]
                    batch.check("ref")
                with timer("peers", timing):
                    if self._maybe_teacher_inputs(batch, items, metrics):
                        batch.check("peers")
                with timer("adv", timing):
                    metrics.update(self.advantage(batch))
                    if not self.off_policy:
                        batch.old_log_probs = None  # one on-policy update: pi_old is pi_theta itself
                batch.check("adv")
                with timer("update_actor", timing):
                    update = self.balancer.call(self.group.update_actor, batch, metrics)
                    metrics.update(reduce_worker_metrics(update["metrics"]))
                self.update_guard.after_update(step, update["skipped_updates"])
                metrics.update(peak_memory_metrics("update", self.group.peak_memory_gb()))
                with timer("teacher", timing):
                    self.group.update_teacher()
            is_last = step == self.total_steps
            if self.val_set is not None and due(trainer.test_freq, step, is_last):
                with timer("testing", timing):
                    last_val = self._validate()
                metrics.update(last_val)
            saved = due(trainer.save_freq, step, is_last) and self.update_guard.may_save(step)
            if saved:
                with timer("save_checkpoint", timing):
                    self._save_checkpoint(step)
            if trainer.rollout_data_dir:
                rollout_io.dump_rollouts(
                    Path(trainer.rollout_data_dir) / f"{step}.jsonl",
                    batch,
                    items,
                    self.tokenizer,
                    step,
                    self.config.actor_rollout_ref.rollout.n,
                )
            metrics.update({f"timing_s/{k}": v for k, v in timing.items()})
            tokens = int(batch.attention_mask.sum().item())
            metrics["perf/total_num_tokens"] = tokens
            metrics["perf/response_num_tokens"] = int(batch.response_mask.sum().item())
            if batch.teacher_attention_mask is not None:
                metrics["perf/teacher_num_tokens"] = int(batch.teacher_attention_mask.sum().item())
            metrics["perf/throughput"] = tokens / max(timing["step"], 1e-9)
            metrics["training/global_step"] = step
            metrics["training/epoch"] = self.sampler.state_dict()["epoch"]
            self.tracker.log(metrics, step=step)
            self.update_guard.stop_if_dead(step, self.checkpoints.latest)
            if self.preemption.requested and not is_last:
                self._stop_for_preemption(step, saved)
        self.tracker.close()
        self._print_summary(first_val, last_val, time.perf_counter() - started)
        return last_val

    def _print_summary(self, first_val: tuple[int, dict] | None, last_val: dict, seconds: float) -> None:
        """The end of a run in three lines: held-out scores before -> after, and where the files are."""
        minutes, secs = divmod(int(round(seconds)), 60)
        print(f"[mopd] done: step {self.global_step}/{self.total_steps} in {minutes}m{secs:02d}s", flush=True)
        for key in sorted(k for k in last_val if k.startswith("val-core/")):
            before = f"{first_val[1][key]:.4f} (step {first_val[0]}) -> " if first_val and key in first_val[1] else ""
            print(f"[mopd]   {key}: {before}{last_val[key]:.4f} (step {self.global_step})", flush=True)
        trainer = self.config.trainer
        where = [str(self.output_dir / "metrics.jsonl")] if "jsonl" in trainer.logger else []
        for key in ("rollout_data_dir", "validation_data_dir"):
            if getattr(trainer, key):
                where.append(f"{getattr(trainer, key)}/<step>.jsonl")
        if trainer.save_freq > 0:
            where.append(str(self.output_dir / "checkpoints"))
        print(f"[mopd] results: {', '.join(where)}", flush=True)

    def close(self) -> None:
        self.group.shutdown()
        self.scorer.close()

    # ------------------------------------------------------------------------------------------
    def _batches(self):
        from trainer.prompt_dataset import collate_prompts

        while True:
            for indices in self.sampler:
                yield collate_prompts([self.train_set[i] for i in indices], self.tokenizer.pad_token_id)

    def _sampling(self, validate: bool) -> SamplingParams:
        rollout = self.config.actor_rollout_ref.rollout
        src = rollout.val_kwargs if validate else rollout
        return SamplingParams(
            n=src.n,
            temperature=src.temperature,
            top_p=src.top_p,
            top_k=src.top_k,
            do_sample=src.do_sample,
            max_new_tokens=self.config.data.max_response_length,
        )

    def _generate(
        self, items: PromptBatch, step: int, validate: bool = False, timing: dict | None = None
    ) -> RolloutBatch:
        """The prompts' rollouts, as the workers' ``generate`` returns them (prompt + response joined)."""
        with timer("weight_sync", timing if timing is not None else {}):  # part of timing_s/gen
            self.group.sync_rollout_weights()
        request = RolloutBatch(
            meta=StepMeta(step=step, sampling=self._sampling(validate), tag="val" if validate else "gen"),
            input_ids=items.input_ids,
            attention_mask=items.attention_mask,
            uid=list(items.uid),
        )
        request.check("prompts")
        batch = self.group.generate(request)
        batch.check("generate")
        return batch

    def _score(self, batch: RolloutBatch, items: PromptBatch, metrics: dict | None, n: int | None = None) -> list[dict]:
        n = n or self.config.actor_rollout_ref.rollout.n
        texts = self.tokenizer.batch_decode(valid_tokens(batch), skip_special_tokens=True)
        batch.response_text = texts
        requests = []
        for i, text in enumerate(texts):
            p = i // n
            extra = dict(items.extra_info[p] or {})
            extra["truncated"] = bool(batch.response_mask[i].all().item())  # no EOS within the budget
            requests.append((items.data_source[p], text, items.ground_truth[p], extra))
        results = self.scorer.score(requests)
        health = self.reward_health.check(results, "validation" if metrics is None else f"step {self.global_step}")
        batch.scores = torch.tensor([float(r["score"]) for r in results], dtype=torch.float32)
        batch.reward_extra = results
        if metrics is not None:
            lengths = batch.response_mask.sum(-1).float()
            metrics.update(
                {
                    "reward/error_fraction": health["error_fraction"],
                    "reward/nonfinite_fraction": health["nonfinite_fraction"],
                    "critic/score/mean": batch.scores.mean().item(),
                    "critic/score/max": batch.scores.max().item(),
                    "critic/score/min": batch.scores.min().item(),
                    "response_length/mean": lengths.mean().item(),
                    "response_length/max": lengths.max().item(),
                    "response_length/clip_ratio": float(
                        np.mean([r.get("truncated", False) for r in (q[3] for q in requests)])
                    ),
                }
            )
            successes = (batch.scores >= self.success_threshold).tolist()
            metrics.update(self.uid_tracker.update(batch.uid, successes))
        return results

    def _maybe_old_log_probs(self, batch: RolloutBatch) -> bool:
        """Whether the stage ran (set ``old_log_probs``, and ``rollout_is_weights`` with ``rollout_is``)."""
        if not (self.off_policy or self.rollout_is or self.advantage.kl_in_reward):
            return False  # on-policy single update: pi_old is pi_theta itself (IS weight exactly 1)
        batch.old_log_probs = self.balancer.call(self.group.compute_log_prob, batch)["old_log_probs"]
        if self.rollout_is:
            rc = self.config.algorithm.rollout_correction
            batch.rollout_is_weights = rollout_is_weights(
                batch.old_log_probs,
                batch.rollout_log_probs,
                batch.response_mask,
                level=self.rollout_is,
                threshold=rc.rollout_is_threshold,
            )
        return True

    def _maybe_teacher_inputs(self, batch: RolloutBatch, items: PromptBatch, metrics: dict) -> bool:
        """Whether the stage ran (distillation: the teacher's inputs, built from the peers chosen)."""
        if self.loss_mode not in DISTILLATION_MODES:
            return False
        n = self.config.actor_rollout_ref.rollout.n
        lengths = batch.response_mask.sum(-1).tolist()
        rollouts = [
            Rollout(
                uid=batch.uid[i],
                reward=float(batch.scores[i]),
                text=batch.response_text[i],
                feedback=batch.reward_extra[i].get("feedback") or None,
                num_tokens=int(lengths[i]),
            )
            for i in range(len(lengths))
        ]
        selection = select_peers(rollouts, self.sd_cfg, self.peer_rng)
        prompts = [items.messages[i // n] for i in range(len(rollouts))]
        teacher = build_teacher_inputs(
            self.tokenizer,
            prompts,
            rollouts,
            selection,
            batch.responses,
            batch.response_mask,
            self.sd_cfg,
            chat_template_kwargs=self.chat_kwargs,
        )
        batch.teacher_input_ids = teacher.input_ids
        batch.teacher_attention_mask = teacher.attention_mask
        batch.teacher_position_ids = teacher.position_ids
        batch.distillation_mask = torch.tensor(selection.distillation_mask)
        if self.sd_cfg.step_level_kl:
            batch.step_ids = compute_step_ids(
                batch.responses, batch.response_mask, self.tokenizer, self.sd_cfg.step_separator
            )
        batch.teacher_messages = teacher.messages
        metrics.update(selection.metrics)
        metrics.update(teacher.metrics)
        return True

    # ------------------------------------------------------------------------------------------
    def _validate(self) -> dict:
        from trainer.prompt_dataset import collate_prompts

        val_n = self.config.actor_rollout_ref.rollout.val_kwargs.n
        size = self.config.data.val_batch_size or len(self.val_set)
        scores: dict[str, dict[str, list[float]]] = {}
        lengths, dumps = [], []
        for start in range(0, len(self.val_set), size):
            items = collate_prompts(
                [self.val_set[i] for i in range(start, min(start + size, len(self.val_set)))],
                self.tokenizer.pad_token_id,
            )
            batch = self._generate(items.padded_to(self.group.world_size), self.global_step, validate=True)
            keep = len(items.uid) * val_n
            batch = truncate_batch(batch, keep)
            results = self._score(batch, items, None, n=val_n)
            lengths += batch.response_mask.sum(-1).tolist()
            for i, result in enumerate(results):
                p = i // val_n
                group = scores.setdefault(items.data_source[p], {})
                group.setdefault(items.uid[p], []).append(float(result["score"]))
            dumps.append((batch, items))
        metrics = {}
        for source, groups in scores.items():
            values = list(groups.values())
            metrics[f"val-core/{source}/acc/mean@{val_n}"] = float(np.mean([np.mean(v) for v in values]))
            metrics[f"val-core/{source}/acc/pass@{val_n}"] = float(
                np.mean([max(v) >= self.success_threshold for v in values])
            )
        metrics["val/response_length/mean"] = float(np.mean(lengths)) if lengths else 0.0
        out_dir = self.config.trainer.validation_data_dir
        if out_dir:
            rollout_io.dump_rollouts_multi(
                Path(out_dir) / f"{self.global_step}.jsonl", dumps, self.tokenizer, self.global_step, val_n
            )
        return metrics

    # ------------------------------------------------------------------------------------------
    def _save_checkpoint(self, step: int) -> None:
        from trainer.checkpoint import atomic_torch_save

        def write(tmp: Path) -> None:  # into a hidden temp dir, committed (or removed) by the writer
            self.group.save_checkpoint(str(tmp))
            self.group.export_hf(str(tmp / "hf"))
            atomic_torch_save(
                {
                    "global_step": step,
                    "sampler": self.sampler.state_dict(),
                    "peer_rng": self.peer_rng.getstate(),
                    "uid_tracker": self.uid_tracker.state_dict(),
                    "advantage": self.advantage.state_dict(),
                },
                tmp / "driver_state.pt",
            )

        final = self.ckpt_writer.save(step, write)
        print(f"[mopd] checkpoint step {step}: {final}", flush=True)

    def _stop_for_preemption(self, step: int, saved: bool) -> None:
        """After a SIGTERM/SIGUSR1: checkpoint this step (unless just done or its updates were skipped), then stop."""
        if not saved and self.update_guard.may_save(step):
            self._save_checkpoint(step)
            saved = True
        self.tracker.close()
        if not saved:
            raise PreemptedError(
                f"stopped by {self.preemption.signal_name} after step {step}; no checkpoint of it "
                f"written (its updates were skipped); {self._resume_hint()}"
            )
        raise PreemptedError(
            self.preemption.stopped_message(
                step, str(self.checkpoints.step_dir(step)), self.config.trainer.resume_mode == "auto"
            )
        )

    def _load_checkpoint(self) -> int:
        trainer = self.config.trainer
        path = self.checkpoints.resolve_resume(trainer.resume_mode, trainer.resume_from_path)
        if path is None:
            return 0
        self.group.load_checkpoint(str(path))
        state = torch.load(Path(path) / "driver_state.pt", weights_only=False)
        self.sampler.load_state_dict(state["sampler"])
        self.peer_rng.setstate(state["peer_rng"])
        self.uid_tracker.load_state_dict(state["uid_tracker"])
        self.advantage.load_state_dict(state.get("advantage"))
        print(f"[mopd] resumed from {path} at step {state['global_step']}", flush=True)
        return int(state["global_step"])
