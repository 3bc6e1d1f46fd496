"""The vLLM version gate checks every keyword the weight sync passes to reload_weights (no vLLM needed)."""

from __future__ import annotations

from workers.vllm_rollout import RELOAD_KEYWORDS, missing_reload_keywords


def test_every_keyword_the_sync_passes_is_checked():
    assert set(RELOAD_KEYWORDS) == {"weights_iterator", "is_checkpoint_format"}

    def current(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True): ...

    def older(self, weights_iterator=None, weights_path=None): ...  # takes the first keyword only

    def forwarding(self, **kwargs): ...

    assert missing_reload_keywords(current) == []
    assert missing_reload_keywords(older) == ["is_checkpoint_format"]
    assert missing_reload_keywords(forwarding) == []
    assert missing_reload_keywords(lambda self: None) == list(RELOAD_KEYWORDS)


def test_the_sync_passes_exactly_the_checked_keywords():
    import inspect

    from workers import vllm_rollout

    source = inspect.getsource(vllm_rollout.VLLMRollout.load_weights)
    for keyword in RELOAD_KEYWORDS:
        assert f'"{keyword}"' in source
