"""mopd.common.models: the shared HF loading helpers name the flag a bad value came from."""

from __future__ import annotations

import pytest
import torch

from mopd.common import models
from mopd.common.errors import ConfigError, MissingFileError


def test_embedded_resolves_and_loads_with_left_padding():
    path = models.resolve_model_path("embedded")
    assert path == str(models.EMBEDDED_MODEL)
    tokenizer = models.load_tokenizer(path)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    model = models.load_causal_lm(path, dtype=torch.float32, device=torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.float32
    assert models.resolve_model_path("/some/dir") == "/some/dir"


def test_bad_paths_and_settings_are_one_line_errors_naming_the_flag(tmp_path):
    with pytest.raises(MissingFileError, match=r"^--model=.*cannot load the tokenizer"):
        models.load_tokenizer(str(tmp_path / "nope"), flag="--model")
    with pytest.raises(MissingFileError, match=r"^actor_rollout_ref.model.path=.*cannot load the model"):
        models.load_causal_lm(str(tmp_path), dtype=torch.float32)
    with pytest.raises(ConfigError, match="--dtype must be auto or one of"):
        models.pick_dtype("float8", torch.device("cpu"), flag="--dtype")
    assert models.pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert models.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="trainer.device must be auto, cpu, cuda or cuda:N"):
        models.pick_device("tpu")
