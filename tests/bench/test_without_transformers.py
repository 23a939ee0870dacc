"""transformers is an optional extra (``bench``): without it every module imports, every verb shows its
help, and ``speechcl bench`` says how to install it instead of failing with a traceback.

Runs in a fresh interpreter in which ``import transformers`` raises ImportError, as when it is not
installed (this process may have imported it already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import contextlib, importlib, io, json, pkgutil, sys
sys.modules["transformers"] = None  # `import transformers` now raises ImportError
import speechcl
from speechcl.cli import build_parser, main

modules = [m.name for m in pkgutil.walk_packages(speechcl.__path__, "speechcl.") if m.name != "speechcl.__main__"]
failed = {}
for name in modules:
    try:
        importlib.import_module(name)
    except ImportError as err:
        failed[name] = str(err)

parser = build_parser()
verbs = sorted(next(a for a in parser._actions if a.dest == "verb").choices)
helps = {}
for verb in ["--help"] + [[v, "--help"] for v in verbs]:
    argv = verb if isinstance(verb, list) else [verb]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            helps[" ".join(argv)] = None
        except SystemExit as exit:
            helps[" ".join(argv)] = exit.code

err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    bench = main(["bench", "inference", "--quick"])
print(json.dumps({"modules": len(modules), "failed": failed, "verbs": verbs, "helps": helps,
                  "bench": bench, "bench_err": err.getvalue(), "loaded": "transformers" in sys.modules
                  and sys.modules["transformers"] is not None}))
"""


def test_verbs_work_and_bench_explains_without_transformers():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["modules"] > 20 and result["failed"] == {}
    assert {"bench", "pretrain", "finetune", "extract", "evaluate", "synth", "prepare"} <= set(result["verbs"])
    assert all(code == 0 for code in result["helps"].values()), result["helps"]
    assert result["bench"] == 2
    assert "pip install 'speechcl[bench]'" in result["bench_err"] and "Traceback" not in result["bench_err"]
    assert not result["loaded"]
