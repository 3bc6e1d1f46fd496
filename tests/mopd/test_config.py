"""SelfDistillationConfig: every release field, the README defaults, one clear message per mistake."""

import pytest

from mopd.core.config import CONFIG_PREFIX, ConfigError, SelfDistillationConfig

RELEASE_FIELDS = [
    "include_primary_solution",
    "include_another_solution",
    "include_failure_solution",
    "failure_solution_condition",
    "success_reward_threshold",
    "dont_reprompt_on_self_success",
    "remove_thinking_from_demonstration",
    "include_environment_feedback",
    "environment_feedback_only_without_solution",
    "summarize_solutions",
    "summary_k",
    "summary_tag",
    "summary_source",
    "summary_from_all",
    "summary_instruction",
    "summary_item_template",
    "summary_item_template_failed",
    "peer_control_mode",
    "peer_control_match",
    "reprompt_template",
    "solution_template",
    "another_solution_template",
    "failure_solution_template",
    "feedback_template",
    "max_reprompt_len",
    "reprompt_truncation",
    "alpha",
    "distillation_topk",
    "distillation_add_tail",
    "full_logit_distillation",
    "is_clip",
    "teacher_regularization",
    "teacher_update_rate",
    "step_level_kl",
    "step_separator",
]


def test_every_release_field_exists():
    names = set(SelfDistillationConfig.field_names())
    assert not [f for f in RELEASE_FIELDS if f not in names]


def test_defaults_are_the_seed_readme_ones():
    c = SelfDistillationConfig()
    assert (c.include_primary_solution, c.include_another_solution, c.include_failure_solution) == (True, False, False)
    assert c.failure_solution_condition == "when_no_solution"
    assert c.alpha == 0.5 and c.distillation_topk == 100 and c.success_reward_threshold == 1.0
    assert c.dont_reprompt_on_self_success is True
    assert c.reprompt_truncation == "left"  # the release's "right" can cut the assistant header
    assert "{prompt}" in c.reprompt_template and c.solution_template.startswith("\nCorrect solution:")


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("failure_solution_condition", "sometimes", "['when_no_solution', 'always']"),
        ("peer_control_mode", "shuffle", "['none', 'random_peer', 'unrelated_prompt', 'success_only_matched']"),
        ("peer_control_match", "chars", "['block', 'token']"),
        ("teacher_regularization", "kl", "['ema', 'trust-region']"),
        ("reprompt_truncation", "middle", "['left', 'right', 'error']"),
        ("summary_source", "best", "['success', 'all', 'failure']"),
    ],
)
def test_bad_choice_names_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ConfigError) as err:
        SelfDistillationConfig(**{field: value})
    message = str(err.value)
    assert f"{CONFIG_PREFIX}.{field}" in message and allowed in message and repr(value) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(alpha=1.5), "alpha must be in [0, 1]"),
        (dict(alpha=-0.1), "alpha must be in [0, 1]"),
        (dict(teacher_update_rate=2.0), "teacher_update_rate must be in [0, 1]"),
        (dict(distillation_topk=0), "distillation_topk must be a positive integer or null"),
        (dict(distillation_topk=2.5), "distillation_topk must be a positive integer or null"),
        (dict(is_clip=0), "is_clip must be a positive number or null"),
        (dict(max_reprompt_len=0), "max_reprompt_len must be a positive integer"),
        (dict(summary_k=0), "summary_k must be a positive integer"),
        (dict(full_logit_distillation=False), "alpha must be 1.0 when full_logit_distillation=false"),
        (dict(include_failure_solution="yes"), "include_failure_solution must be true or false"),
        (dict(step_separator=""), "step_separator must be a non-empty string"),
        (
            dict(solution_template="no placeholder"),
            "solution_template must contain the placeholder(s) ['successful_previous_attempt']",
        ),
        (dict(failure_solution_template="{failed_attempt} {oops}"), "unknown placeholder(s) ['oops']"),
        (dict(reprompt_template="{prompt}{solution"), "is not a valid template"),
        (dict(include_failure_solution=True, reprompt_template="{prompt}{solution}{feedback}"), "['failure']"),
    ],
)
def test_bad_values_get_one_clear_message(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        SelfDistillationConfig(**kwargs)
    assert needle in str(err.value)


def test_valid_edge_values():
    SelfDistillationConfig(alpha=0.0)
    SelfDistillationConfig(alpha=1.0, full_logit_distillation=False)
    SelfDistillationConfig(distillation_topk=None, is_clip=None)
    # a reprompt template may leave out sections whose flags are off
    SelfDistillationConfig(include_environment_feedback=False, reprompt_template="{prompt}{solution}\nGo.")


def test_from_dict_rejects_unknown_keys_with_a_suggestion():
    with pytest.raises(
        ConfigError,
        match=r"self_distillation\.include_failure_solutions is not a known field\. Did you mean 'include_failure_solution'",
    ):
        SelfDistillationConfig.from_dict({"include_failure_solutions": True})


def test_from_dict_round_trip_and_summary_source():
    c = SelfDistillationConfig.from_dict({"summary_from_all": True, "summary_source": "failure", "alpha": 1})
    assert c.effective_summary_source == "all"
    assert SelfDistillationConfig.from_dict(c.to_dict()) == c
