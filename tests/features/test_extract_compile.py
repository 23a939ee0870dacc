"""``speechcl extract --compile``: the compiled transformer layers give the eager features (graph capture
only here: the ``aot_eager`` backend), and the setting is recorded so a rerun cannot mix the two."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speechcl.models.compile import compile_counters
from tests.features.test_extract_cli import extract, npy_outputs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_compiled_extraction_equals_eager(tmp_path, corpus, groupnorm_model_dir, monkeypatch):
    monkeypatch.setenv("SPEECHCL_COMPILE_BACKEND", "aot_eager")
    common = ["--model", str(groupnorm_model_dir), "--input", str(corpus), "--device", "cpu", "--layers", "0,2",
              "--max-tokens", "40000", "--num-workers", "0"]
    assert extract(*common, "--output", str(tmp_path / "eager")) == 0
    before = compile_counters()["frames"]
    assert extract(*common, "--output", str(tmp_path / "compiled"), "--compile") == 0
    assert compile_counters()["frames"] > before  # the layers did run compiled
    eager, compiled = npy_outputs(tmp_path / "eager"), npy_outputs(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() and len(eager) == 6
    for key in eager:  # batches of several sizes and lengths, padded: one compiled graph serves them all
        np.testing.assert_allclose(compiled[key], eager[key], rtol=1e-4, atol=1e-5, err_msg=key)
    settings = json.loads((tmp_path / "compiled" / "extract_config.json").read_text())
    assert settings["compile"] is True
    assert "compile" not in json.loads((tmp_path / "eager" / "extract_config.json").read_text())
    # the same folder without --compile: other settings, refused
    assert extract(*common, "--output", str(tmp_path / "compiled")) == 2
