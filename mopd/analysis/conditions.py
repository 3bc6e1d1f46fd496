"""The teacher-context conditions of the study (names, definitions, required sections); no heavy imports."""

from __future__ import annotations

from typing import Any

SECTION_KEYS = ("solution", "another_solution", "failure_solution", "feedback", "summary")

# The release's conditions, in its order. Keys: include_primary_solution / include_another_solution /
# include_failure_solution / include_environment_feedback / summarize_solutions (+ summary_from_all, summary_k,
# summary_control), peer_control (random | score_ordered), force_reprompt, score_format (raw).
DEFAULT_VARIANTS: list[dict[str, Any]] = [
    {"name": "base"},
    {"name": "base_raw", "score_format": "raw"},
    {"name": "base_reprompt", "force_reprompt": True},
    {"name": "solution", "include_primary_solution": True},
    {"name": "another_solution", "include_another_solution": True},
    {"name": "solution+another_solution", "include_primary_solution": True, "include_another_solution": True},
    {"name": "all_solutions", "include_primary_solution": True, "include_another_solution": True},
    {"name": "failure_solution", "include_failure_solution": True},
    {"name": "solution+failure_solution", "include_primary_solution": True, "include_failure_solution": True},
    {
        "name": "solution+another_solution+failure_solution",
        "include_primary_solution": True,
        "include_another_solution": True,
        "include_failure_solution": True,
    },
    {"name": "feedback", "include_environment_feedback": True},
    {"name": "summary_success_k2", "summarize_solutions": True, "summary_k": 2},
    {"name": "solution+feedback", "include_primary_solution": True, "include_environment_feedback": True},
    {
        "name": "solution+summary_success_k2",
        "include_primary_solution": True,
        "summarize_solutions": True,
        "summary_k": 2,
    },
    {
        "name": "solution+feedback+summary_all_k2",
        "include_primary_solution": True,
        "include_environment_feedback": True,
        "summarize_solutions": True,
        "summary_from_all": True,
        "summary_k": 2,
    },
    {"name": "failure_only", "include_failure_solution": True},
    {
        "name": "random_summary_control",
        "summarize_solutions": True,
        "summary_control": "random_other_prompt",
        "summary_k": 2,
    },
    {"name": "random_peer", "peer_control": "random"},
    {"name": "verifier_score_ordered", "peer_control": "score_ordered"},
]
DEFAULT_GLOBAL = {
    "dont_reprompt_on_self_success": True,
    "environment_feedback_only_without_solution": False,
    "summary_k": 2,
}
CONDITION_NAMES = [v["name"] for v in DEFAULT_VARIANTS]
TWO_S_ONE_F = "solution+another_solution+failure_solution"

# Sections a condition must actually show for a row to count as "effective" (metrics' sample sets).
REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {
    "base": (),
    "base_raw": (),
    "base_reprompt": (),
    "solution": ("solution",),
    "another_solution": ("another_solution",),
    "solution+another_solution": ("solution", "another_solution"),
    "all_solutions": ("solution", "another_solution"),
    "failure_solution": ("failure_solution",),
    "solution+failure_solution": ("solution", "failure_solution"),
    TWO_S_ONE_F: ("solution", "another_solution", "failure_solution"),
    "feedback": ("feedback",),
    "summary_success_k2": ("summary",),
    "solution+feedback": ("solution", "feedback"),
    "solution+summary_success_k2": ("solution", "summary"),
    "solution+feedback+summary_all_k2": ("solution", "summary"),
    "failure_only": ("failure_solution",),
    "random_summary_control": ("summary",),
    "random_peer": ("solution",),
    "verifier_score_ordered": ("solution",),
}
