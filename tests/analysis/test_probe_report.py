"""The side-by-side figure of several models' probes."""

from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import pytest

from speechcl.analysis.probe_report import comparison_png


def _result(task: str, values: list[float], chance: float) -> dict:
    return {"task": task, "metric": "accuracy", "chance": chance, "weighted_sum": max(values),
            "per_layer": {str(i): v for i, v in enumerate(values)}}


def test_one_panel_per_task_and_a_model_may_lack_one() -> None:
    runs = {"random": {"phone": _result("phone", [0.2, 0.3, 0.25], 0.1)},
            "pretrained": {"phone": _result("phone", [0.3, 0.5, 0.4], 0.1),
                           "speaker": _result("speaker", [0.9, 1.0, 1.0], 0.06)}}
    image = matplotlib.image.imread(io.BytesIO(comparison_png(runs)), format="png")
    assert image.shape[1] == 2 * 420  # two tasks: two panels of 4.2 inches at 100 dpi
    one = matplotlib.image.imread(io.BytesIO(comparison_png({"random": runs["random"]})), format="png")
    assert one.shape[1] == 420 and not np.allclose(one, one[0, 0])  # something was drawn


def test_nothing_to_compare_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        comparison_png({"random": {}})
