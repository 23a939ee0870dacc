"""The GPU measurement script: its dry run (every stage, on CPU, tiny) and the machinery that keeps a
real run inside its time budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from speechcl.bench import gpu_check  # noqa: E402
from speechcl.bench.gpu_check import STAGES, CheckConfig, run_check, run_isolated, summary_markdown  # noqa: E402

TOOL = Path(__file__).resolve().parents[2] / "tools" / "gpu_check.py"


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_the_results(tmp_path):
    """``tools/gpu_check.py --dry``: the real run's code paths on CPU; three files come back."""
    proc = subprocess.run([sys.executable, str(TOOL), "--dry", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "results.json", "summary.md"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["stages"]) == list(STAGES)
    assert all(r["status"] == "ok" for r in results["stages"].values()), results["stages"]
    stages = {name: r["result"] for name, r in results["stages"].items()}
    assert stages["attention"]["ok"]
    assert {"transformers_bf16", "speechcl_bf16"} <= set(stages["pretrain"]["sides"])
    assert stages["compile"]["pretrain"]["compile"]["graph_breaks"] == 0
    assert stages["syncs"]["speechcl_bf16_step"]["total"] > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "dry run on CPU" in summary and "| compile | ok |" in summary and "extraction: files/s" in summary


def test_a_stage_past_its_time_is_stopped_with_what_it_started(tmp_path):
    log = tmp_path / "log.txt"
    marker = tmp_path / "child-alive"
    # the stage starts a child of its own; the timeout must end both
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            f"'import time, pathlib; time.sleep(3); pathlib.Path(r\"{marker}\").write_text(\"x\")']); time.sleep(60)")
    start = time.perf_counter()
    record = run_isolated([sys.executable, "-c", code], tmp_path / "none.json", 1.0, log)
    assert record["status"] == "timeout" and time.perf_counter() - start < 20
    time.sleep(4)
    assert not marker.exists()
    done = tmp_path / "done.json"
    code = f"import json; json.dump({{'status': 'ok', 'seconds': 0.0, 'result': 1}}, open(r'{done}', 'w')); print('hi')"
    assert run_isolated([sys.executable, "-c", code], done, 30.0, log) == {"status": "ok", "seconds": 0.0, "result": 1}
    assert "hi" in log.read_text()
    assert run_isolated([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "x.json", 30.0, log)["status"] == "error"


def test_a_failing_stage_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(cfg):
        raise RuntimeError("out of memory, say")

    monkeypatch.setitem(STAGES, "attention", (broken, 1.0))
    monkeypatch.setitem(STAGES, "environment", (lambda cfg: {"torch": "t", "transformers": "x", "python": "p",
                                                             "gpu": "G"}, 1.0))
    results = run_check(tmp_path, CheckConfig.dry_run(), ["environment", "attention"], isolate=False)
    assert results["stages"]["environment"]["status"] == "ok"
    assert results["stages"]["attention"]["status"] == "error"
    summary = (tmp_path / "summary.md").read_text()
    assert "| attention | error |" in summary and "out of memory, say" in summary and "G, torch t" in summary
    assert json.loads((tmp_path / "results.json").read_text())["stages"]["attention"]["status"] == "error"
    with pytest.raises(ValueError, match="unknown stages"):
        run_check(tmp_path, CheckConfig.dry_run(), ["nope"], isolate=False)


def test_out_of_budget_stages_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "environment", (lambda cfg: {"torch": "t", "transformers": "x", "python": "p"}, 1.0))
    cfg = CheckConfig.dry_run()
    cfg.budget_minutes = 0.1  # 6 s: less than the summary's reserve
    results = run_check(tmp_path, cfg, ["environment"], isolate=False)
    assert results["stages"]["environment"]["status"] == "skipped"


def test_summary_puts_compiled_ratios_beside_the_eager_ones():
    eager = {"settings": {"device": "cuda"}, "ratios": {"speed_bf16_vs_reference_bf16": 1.2}}
    compiled = {"settings": {"device": "cuda"}, "ratios": {"speed_bf16_vs_reference_bf16": 1.1,
                                                            "speed_compiled_vs_reference_bf16": 1.7}}
    results = {"config": {"dry": False, "device": "cuda"}, "started": "now", "seconds": 1.0, "environment_line": "H200",
               "stages": {"pretrain": {"status": "ok", "seconds": 1.0, "result": eager},
                          "compile": {"status": "ok", "seconds": 1.0, "result": {"pretrain": compiled}}}}
    rows = {line.split("  ")[0]: line.split() for line in summary_markdown(results).splitlines()}
    assert rows["pretrain bf16: speed vs transformers bf16"][-4:] == ["1.20x", ">=", "1.50x", "MISS"]  # eager's own
    assert rows["pretrain bf16 compiled: speed vs transformers bf16"][-4:] == ["1.70x", ">=", "1.50x", "PASS"]
    assert gpu_check._merged_for_targets(results)["pretrain"]["ratios"]["speed_bf16_vs_reference_bf16"] == 1.2
