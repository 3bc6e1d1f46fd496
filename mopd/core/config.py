"""Typed configuration of ``actor_rollout_ref.actor.self_distillation``.

Every field of the public MOPD release exists here with the defaults its README states (primary peer
on, another/failure off, ``when_no_solution``, alpha 0.5, top-k 100, threshold 1.0, no self-reprompt);
fields the README is silent on take the release's YAML value, except ``reprompt_truncation`` whose
release default (``right``) can cut the assistant header off the teacher prompt: ours is ``left``.

This dataclass is the one home of each field's default, type, allowed values and doc (docs/config.md is
generated from it; Hydra composes over its defaults). It is built once, as part of the trainer's typed
config (``trainer/config_sections.py``), and handed to the driver and the ranks; ``from_dict`` builds it
alone (the analysis tools). A bad value raises :class:`ConfigError` with one line that names the full key
and the allowed values.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mopd.common.errors import ConfigError
from mopd.common.typed_config import Section, option

CONFIG_PREFIX = "actor_rollout_ref.actor.self_distillation"


# Templates: leading newline, no trailing newline, as the release's YAML block scalars render them.
DEFAULT_REPROMPT_TEMPLATE = (
    "{prompt}{solution}{solution_summaries}{another_solution}{failure}{feedback}"
    "\n\nCorrectly solve the original question."
)
DEFAULT_SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
DEFAULT_ANOTHER_SOLUTION_TEMPLATE = "\nAnother successful solution:\n\n{another_successful_attempt}"
DEFAULT_FAILURE_SOLUTION_TEMPLATE = "\nA known failed solution (avoid repeating this mistake):\n\n{failed_attempt}"
DEFAULT_FEEDBACK_TEMPLATE = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}"
DEFAULT_SUMMARY_INSTRUCTION = (
    "\n\nAfter your answer, briefly summarize your key approach in one sentence inside "
    "<summary> tags, e.g. <summary>...</summary>."
)
DEFAULT_SUMMARY_ITEM_TEMPLATE = "\nSummary of another successful solution:\n\n{summary_text}\n\n"
DEFAULT_SUMMARY_ITEM_TEMPLATE_FAILED = "\nSummary of another unsuccessful solution:\n\n{summary_text}\n\n"

# Placeholders each template must contain (all of them) and may contain (nothing else).
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "reprompt_template": (
        "prompt",
        "solution",
        "solution_summaries",
        "another_solution",
        "failure",
        "feedback",
    ),
    "solution_template": ("successful_previous_attempt",),
    "another_solution_template": ("another_successful_attempt",),
    "failure_solution_template": ("failed_attempt",),
    "feedback_template": ("feedback_raw",),
    "summary_item_template": ("summary_text",),
    "summary_item_template_failed": ("summary_text",),
}


@dataclass
class SelfDistillationConfig(Section):
    """``actor_rollout_ref.actor.self_distillation``: the MOPD / SDPO teacher context and divergence."""

    PREFIX: ClassVar[str] = CONFIG_PREFIX
    CHECK_FIELDS: ClassVar[bool] = False  # validate() below checks every field with this block's messages

    # --- which peers enter the teacher context -------------------------------------------------
    include_primary_solution: bool = option(True, "show the first successful peer of the same prompt")
    include_another_solution: bool = option(False, "show a second successful peer")
    include_failure_solution: bool = option(
        False, 'show one failed peer, drawn with the seeded generator ("avoid repeating this mistake")'
    )
    failure_solution_condition: str = option(
        "when_no_solution",
        "when the failed peer is shown: only when no success peer is (when_no_solution), or always (MOPD's 2S1F)",
        choices=("when_no_solution", "always"),
    )
    success_reward_threshold: float = option(
        1.0,
        "sequence reward >= threshold is a success (the release's name: setting it sets reward.success_threshold)",
        interpolation="${reward.success_threshold}",
    )
    dont_reprompt_on_self_success: bool = option(True, "never show a rollout its own response")
    remove_thinking_from_demonstration: bool = option(
        False, "strip <think>...</think> from success texts (not the failure)"
    )
    # --- environment feedback (the sample's own verifier feedback) ------------------------------
    include_environment_feedback: bool = option(True, "add the rollout's own verifier feedback")
    environment_feedback_only_without_solution: bool = option(True, "... only when no success is shown")
    # --- summaries of peers, written by the policy inside <summary> tags --------------------------
    summarize_solutions: bool = option(False, "ask the policy for a <summary> and show peers' summaries")
    summary_k: int = option(1, "summaries per teacher prompt")
    summary_tag: str = option("summary", "the tag the summaries are read from")
    summary_source: str = option("success", "the pool summaries are drawn from", choices=("success", "all", "failure"))
    summary_from_all: bool = option(False, "shorthand for summary_source=all")
    summary_instruction: str = option(
        DEFAULT_SUMMARY_INSTRUCTION, "appended to the last user message of every training prompt"
    )
    summary_item_template: str = option(DEFAULT_SUMMARY_ITEM_TEMPLATE, "one successful peer's summary")
    summary_item_template_failed: str = option(DEFAULT_SUMMARY_ITEM_TEMPLATE_FAILED, "one failed peer's summary")
    summary_fallback_chars: int = option(300, "a peer without a summary tag contributes its first N characters")
    # --- matched-budget peer-control ablations --------------------------------------------------
    peer_control_mode: str = option(
        "none",
        "peer-control ablations (none: off)",
        choices=("none", "random_peer", "unrelated_prompt", "success_only_matched"),
    )
    peer_control_match: str = option(
        "block", "block: same number of blocks; token: same demo token budget", choices=("block", "token")
    )
    # --- templates ------------------------------------------------------------------------------
    reprompt_template: str = option(DEFAULT_REPROMPT_TEMPLATE, "the teacher prompt around the sections")
    solution_template: str = option(DEFAULT_SOLUTION_TEMPLATE, "the first successful peer")
    another_solution_template: str = option(DEFAULT_ANOTHER_SOLUTION_TEMPLATE, "the second successful peer")
    failure_solution_template: str = option(DEFAULT_FAILURE_SOLUTION_TEMPLATE, "the failed peer")
    feedback_template: str = option(DEFAULT_FEEDBACK_TEMPLATE, "the rollout's own verifier feedback")
    # --- teacher prompt length ------------------------------------------------------------------
    max_reprompt_len: int = option(10240, "max teacher-prompt tokens (before the response)")
    reprompt_truncation: str = option(
        "left",
        "drop peer context from the left or right end when too long; error: raise",
        choices=("left", "right", "error"),
    )
    # --- the divergence -------------------------------------------------------------------------
    alpha: float = option(0.5, "0 KL(teacher||student), 1 KL(student||teacher), between: generalized JSD")
    distillation_topk: int | None = option(100, "the student's top-k support; null = full vocabulary")
    distillation_add_tail: bool = option(True, 'add a "rest of the vocabulary" bucket')
    full_logit_distillation: bool = option(True, "false: sampled-token reverse-KL estimator (needs alpha=1)")
    is_clip: float | None = option(2.0, "cap on the detached pi_theta/pi_old weight; null disables")
    # --- the teacher ----------------------------------------------------------------------------
    teacher_regularization: str = option(
        "ema", "EMA copy of the student, or a trust-region logit mix", choices=("ema", "trust-region")
    )
    teacher_update_rate: float = option(0.05, "EMA rate / trust-region mix; 0 = frozen teacher")
    # --- step-level averaging -------------------------------------------------------------------
    step_level_kl: bool = option(False, "weight reasoning steps equally")
    step_separator: str = option("\n\n", "what ends a step")

    # ------------------------------------------------------------------------------------------
    @property
    def effective_summary_source(self) -> str:
        return "all" if self.summary_from_all else self.summary_source

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, prefix: str = CONFIG_PREFIX) -> SelfDistillationConfig:
        """Build from a plain mapping (e.g. ``OmegaConf.to_container``); unknown keys are errors. ``prefix``
        names the block in messages when it sits elsewhere (the analysis tools' variant files)."""
        try:
            return super().from_dict(values, prefix)
        except ConfigError as err:
            if prefix != CONFIG_PREFIX:
                raise ConfigError(str(err).replace(CONFIG_PREFIX, prefix)) from None
            raise

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def fail(name: str, message: str) -> None:
            raise ConfigError(f"{CONFIG_PREFIX}.{name} {message}, got {getattr(self, name)!r}")

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = f.type if isinstance(f.type, str) else f.type.__name__
            if expected == "bool" and not isinstance(value, bool):
                fail(f.name, "must be true or false")
            if expected == "str" and not isinstance(value, str):
                fail(f.name, "must be a string")
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed is not None and getattr(self, f.name) not in allowed:
                fail(f.name, f"must be one of {list(allowed)}")

        for name in ("alpha", "teacher_update_rate", "success_reward_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(name, "must be a number")
        if not 0.0 <= self.alpha <= 1.0:
            fail("alpha", "must be in [0, 1] (0 = KL(teacher||student), 1 = KL(student||teacher))")
        if not 0.0 <= self.teacher_update_rate <= 1.0:
            fail("teacher_update_rate", "must be in [0, 1]")
        if self.distillation_topk is not None and (
            isinstance(self.distillation_topk, bool)
            or not isinstance(self.distillation_topk, int)
            or self.distillation_topk < 1
        ):
            fail("distillation_topk", "must be a positive integer or null (full vocabulary)")
        if self.is_clip is not None and (
            isinstance(self.is_clip, bool) or not isinstance(self.is_clip, (int, float)) or self.is_clip <= 0
        ):
            fail("is_clip", "must be a positive number or null (no clipping)")
        for name in ("max_reprompt_len", "summary_k", "summary_fallback_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "must be a positive integer")
        if not self.full_logit_distillation and self.alpha != 1.0:
            fail(
                "alpha",
                "must be 1.0 when full_logit_distillation=false (the sampled-token estimator is reverse KL only)",
            )
        if not self.step_separator:
            fail("step_separator", "must be a non-empty string")
        if not self.summary_tag or not self.summary_tag.replace("_", "").replace("-", "").isalnum():
            fail("summary_tag", "must be a tag name of letters, digits, '-' or '_'")
        for name, allowed in TEMPLATE_FIELDS.items():
            required = self._required_reprompt_fields() if name == "reprompt_template" else allowed
            _check_template(name, getattr(self, name), allowed, required)

    def _required_reprompt_fields(self) -> tuple[str, ...]:
        """The outer template must hold a slot for every section the flags can produce."""
        control = self.peer_control_mode != "none"
        wanted = {
            "prompt": True,
            "solution": self.include_primary_solution or control,
            "solution_summaries": self.summarize_solutions,
            "another_solution": self.include_another_solution or control,
            "failure": self.include_failure_solution or control,
            "feedback": self.include_environment_feedback,
        }
        return tuple(name for name, on in wanted.items() if on)


def _check_template(name: str, template: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    try:
        used = [fname for _, fname, _, _ in string.Formatter().parse(template) if fname is not None]
    except ValueError as err:  # unbalanced braces
        raise ConfigError(
            f"{CONFIG_PREFIX}.{name} is not a valid template ({err}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    unknown = sorted(set(used) - set(allowed))
    missing = [r for r in required if r not in used]
    if unknown:
        raise ConfigError(
            f"{CONFIG_PREFIX}.{name} uses unknown placeholder(s) {unknown}; allowed: {list(allowed)} "
            "(write literal braces as '{{' and '}}')"
        )
    if missing:
        raise ConfigError(
            f"{CONFIG_PREFIX}.{name} must contain the placeholder(s) {missing} (the enabled flags fill them)"
        )


__all__ = ["SelfDistillationConfig", "ConfigError", "CONFIG_PREFIX"]
