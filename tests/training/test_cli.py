"""``speechcl pretrain`` as a user meets it: the resolved config is saved, bad input exits 2 with a message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.training.helpers import overrides, read_state, run_pretrain_verb, subprocess_env


def test_run_saves_resolved_config(manifest_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp = tmp_path / "exp"
    argv = ["--config-name", "pretrain_cpu",
            *overrides(manifest_dir, exp, trainer__max_update=1, optim__lr=0.002, data__valid_subset="")]
    assert run_pretrain_verb(argv) == 0
    assert "done: 1 updates" in capsys.readouterr().out
    cfg = OmegaConf.load(exp / "config.yaml")
    assert cfg.model.encoder_layers == 2 and cfg.model.encoder_embed_dim == 64  # model=tiny
    assert cfg.trainer.max_update == 1 and cfg.optim.lr == 0.002 and cfg.schedule.kind == "polynomial"
    assert cfg.data.manifest_dir == str(manifest_dir) and cfg.exp_dir == str(exp)
    assert cfg.loss.diversity_weight == 0.1
    # the checkpoint carries the same resolved config next to the model config
    meta = json.loads((exp / "checkpoints" / "last" / "config.json").read_text())
    assert meta["run"] == OmegaConf.to_container(cfg) and meta["model"]["encoder_layers"] == 2
    assert read_state(exp / "checkpoints" / "last")["trainer"]["max_update"] == 1
    assert not (exp / "checkpoints" / "best").exists()  # validation disabled by data.valid_subset=''


def test_print_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_pretrain_verb(["--print-config", "model=tiny", f"exp_dir={tmp_path / 'x'}"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.model.encoder_layers == 2 and printed.optim.betas == [0.9, 0.98]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["trainer.nope=1"], "nope"),
    (["model=huge"], "huge"),
    (["trainer.max_update"], "key=value"),
    ([], "data.manifest_dir is required"),
    (["data.manifest_dir=/nonexistent/dir"], "manifest /nonexistent/dir/train-clean-100.tsv not found"),
    (["trainer.precision=fp16", "trainer.device=cpu"], "fp16 needs a GPU"),
])
def test_bad_input_exits_2_with_message(args: list[str], message: str, manifest_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    if "fp16" in message:
        args = [*args, f"data.manifest_dir={manifest_dir}"]
    argv = ["--config-name", "pretrain_cpu", "model=tiny", f"exp_dir={tmp_path / 'exp'}",
            "data.train_subset=train-clean-100", "data.valid_subset=", *args]
    assert run_pretrain_verb(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_exit_code_of_the_real_command(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "speechcl", "pretrain", "model=tiny", f"exp_dir={tmp_path / 'exp'}", "trainer.nope=1"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 2 and "error: " in proc.stderr and "nope" in proc.stderr


def test_config_dir_adds_a_user_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    user = tmp_path / "conf"
    (user / "model").mkdir(parents=True)
    (user / "model" / "foo.yaml").write_text("defaults:\n  - tiny\n  - _self_\n\nencoder_layers: 1\n")
    assert run_pretrain_verb(["--config-dir", str(user), "--config-name", "pretrain_cpu", "--print-config",
                              "model=foo"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.model.encoder_layers == 1 and printed.model.encoder_embed_dim == 64
    assert run_pretrain_verb(["--config-dir", str(tmp_path / "nope"), "--print-config"]) == 2
    assert "nope not found" in capsys.readouterr().err
