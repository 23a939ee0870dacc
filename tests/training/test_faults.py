"""Training that survives faults: unreadable items are skipped and named, a changed config is refused on
resume, SIGTERM saves a resumable state, a failed checkpoint write keeps the previous checkpoint, and a
diverged run ends in a message instead of a traceback."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor, nn

from speechcl.training.checkpoints import CheckpointManager
from speechcl.training.pretrain import DataConfig, LossConfig, PretrainTask, build_loader
from speechcl.training.trainer import BadDataError, TaskOutput, train
from speechcl.utils.signals import EXIT_PREEMPTED
from tests.training.helpers import (
    DATA,
    TRAIN,
    max_abs_diff,
    overrides,
    pretrain_argv,
    read_log,
    read_state,
    read_weights,
    run_pretrain_verb,
    subprocess_env,
    tiny_configs,
)

SIZE = 40_000  # samples of each bad file as the manifest lists it


def _bad_files(directory: Path) -> dict[str, str]:
    """A NaN float WAV, a truncated FLAC, random bytes named .flac and text named .wav, each listed as SIZE
    samples;
    returns {path: expected words of the reason}."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(SIZE)).astype(np.float32)
    nan = wave.copy()
    nan[100:200] = np.nan
    sf.write(directory / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(directory / "whole.flac", wave, 16000)
    data = (directory / "whole.flac").read_bytes()
    (directory / "truncated.flac").write_bytes(data[: len(data) // 3])
    (directory / "whole.flac").unlink()
    (directory / "noise.flac").write_bytes(rng.bytes(5000))
    (directory / "text.wav").write_text("not audio\n" * 100)
    return {str(directory / "nan.wav"): "NaN", str(directory / "truncated.flac"): "",
            str(directory / "noise.flac"): "", str(directory / "text.wav"): ""}


@pytest.fixture(scope="module")
def dirty_manifest_dir(manifest_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session corpus (12 items) with four unreadable files added to the training manifest."""
    out = tmp_path_factory.mktemp("dirty")
    for path in manifest_dir.iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    bad = _bad_files(out / "bad")
    with open(out / f"{TRAIN}.tsv", "a") as manifest:
        for path in bad:
            manifest.write(f"{path}\t{SIZE}\n")
    return out


class CrashAfter:
    """Wraps a task: raises in the forward after ``n`` training forwards (``None``: never)."""

    def __init__(self, task: PretrainTask, n: int | None) -> None:
        self.task, self.n, self.calls = task, n, 0

    def forward(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> TaskOutput:
        if model.training:
            if self.n is not None and self.calls >= self.n:
                raise RuntimeError("simulated crash")
            self.calls += 1
        return self.task.forward(model, batch, generator)

    def __getattr__(self, name: str) -> object:
        return getattr(self.task, name)


def _train(manifest_dir: Path, exp: Path, seed: int = 1, crash_after: int | None = None, **trainer: object) -> dict:
    from speechcl.models.config import preset
    from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining

    torch.manual_seed(seed)
    cfg = preset("tiny")
    model = Wav2Vec2ForPretraining(cfg)
    loader = build_loader(DataConfig(manifest_dir=str(manifest_dir), **DATA), TRAIN, True)
    task = CrashAfter(PretrainTask(cfg, LossConfig()), crash_after)
    trainer_cfg, optim, schedule = tiny_configs(**({"max_bad_item_share": 0.5} | trainer))
    return train(model, task, loader, None, exp, trainer_cfg, optim, schedule)  # type: ignore[arg-type]


def test_bad_items_are_skipped_named_and_resume_exactly(dirty_manifest_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert _train(dirty_manifest_dir, reference, max_update=7)["num_updates"] == 7  # > one epoch: all seen
    lines = (reference / "bad_items.tsv").read_text().splitlines()
    assert lines[0] == "path\treason"
    named = dict(line.split("\t", 1) for line in lines[1:])
    expected = {p for p in named}
    assert expected == {str(dirty_manifest_dir / "bad" / n)
                        for n in ("nan.wav", "truncated.flac", "noise.flac", "text.wav")}
    assert "NaN" in named[str(dirty_manifest_dir / "bad" / "nan.wav")]
    warnings = [r["message"] for r in read_log(reference) if r["split"] == "warning"]
    assert sum("unreadable training item" in w for w in warnings) == 4  # each named once, not every epoch
    assert sorted(read_state(reference / "checkpoints" / "last")["bad_items"]) == sorted(named)

    resumed = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(dirty_manifest_dir, resumed, max_update=7, save_interval=3, crash_after=4)
    assert _train(dirty_manifest_dir, resumed, seed=99, max_update=7)["num_updates"] == 7
    diff = max_abs_diff(read_weights(resumed / "checkpoints" / "last"), read_weights(reference / "checkpoints" / "last"))
    assert diff == 0.0, f"max abs difference {diff:.3g}"
    assert (resumed / "bad_items.tsv").read_text() == (reference / "bad_items.tsv").read_text()


def test_too_many_bad_items_stop_the_run_with_a_message(dirty_manifest_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BadDataError, match=r"of 16 training items cannot be read.*max_bad_item_share=0.1"):
        _train(dirty_manifest_dir, tmp_path, max_update=7, max_bad_item_share=0.1)
    assert (tmp_path / "bad_items.tsv").exists()


def test_changed_config_on_resume_is_refused_with_a_diff(manifest_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    exp = tmp_path / "exp"
    first = ["--config-name", "pretrain_cpu", *overrides(manifest_dir, exp, trainer__max_update=1,
                                                         data__valid_subset="")]
    assert run_pretrain_verb(first) == 0
    saved = (exp / "config.yaml").read_text()
    assert run_pretrain_verb(first) == 0  # unchanged: resumes (already done), nothing new recorded
    assert sorted(p.name for p in (exp / "config_history").iterdir()) == ["000.yaml"]
    capsys.readouterr()

    changed = [*first, "optim.lr=0.01", "model.encoder_layers=3"]
    assert run_pretrain_verb(changed) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.0005 -> 0.01" in err and "model.encoder_layers: 2 -> 3" in err
    assert "--allow-config-change" in err
    assert (exp / "config.yaml").read_text() == saved
    assert sorted(p.name for p in (exp / "config_history").iterdir()) == ["000.yaml"]

    allowed = [*first, "trainer.max_update=2", "--allow-config-change"]
    assert run_pretrain_verb(allowed) == 0
    assert "trainer.max_update: 1 -> 2" in capsys.readouterr().err
    assert read_state(exp / "checkpoints" / "last")["num_updates"] == 2
    assert (exp / "config_history" / "000.yaml").read_text() == saved  # the original record stays
    assert "max_update: 2" in (exp / "config.yaml").read_text()
    assert "# resumed with these changes" in (exp / "config_history" / "001.yaml").read_text()

    # a stopping rule outside every schedule resumes without permission, and is recorded
    budget = [*first, "trainer.max_update=2", "trainer.max_minutes=60", "trainer.max_epoch=9"]
    assert run_pretrain_verb(budget) == 0
    err = capsys.readouterr().err
    assert "trainer.max_minutes: 0 -> 60" in err and "trainer.max_epoch: 0 -> 9" in err
    assert "# trainer.max_minutes: 0 -> 60" in (exp / "config_history" / "002.yaml").read_text()


def test_keys_a_newer_version_adds_do_not_block_a_resume() -> None:
    from speechcl.training.run_record import config_diff

    old = {"trainer": {"max_update": 4, "max_minutes": 0}, "optim": {"lr": 1e-3}}
    new = {"trainer": {"max_update": 4, "max_minutes": 30, "compile": False}, "optim": {"lr": 1e-3}}
    assert config_diff(old, new, benign=False) == []
    assert config_diff(old, new, benign=True) == ["  trainer.compile: (new) -> False", "  trainer.max_minutes: 0 -> 30"]
    assert config_diff(old, new) == config_diff(old, new, benign=True)
    # what changes the trajectory still blocks: the LR schedule's length, a removed key
    assert config_diff(old, {"trainer": {"max_update": 8, "max_minutes": 0}}, benign=False) == [
        "  optim.lr: 0.001 -> (removed)", "  trainer.max_update: 4 -> 8"]


def _logged_step(exp: Path) -> int:
    try:
        return max((r.get("step", 0) for r in read_log(exp) if r["split"] == "train"), default=0)
    except (FileNotFoundError, ValueError):
        return 0


def test_sigterm_to_the_process_group_still_saves(manifest_dir: Path, tmp_path: Path) -> None:
    """A cluster's preemption, Ctrl-C or ``pkill -f`` signals the data workers too: the run must still save."""
    exp = tmp_path / "exp"
    argv = pretrain_argv(manifest_dir, exp, trainer__max_update=40, data__valid_subset="", data__num_workers=2)
    proc = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while _logged_step(exp) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert int(read_state(exp / "checkpoints" / "last")["num_updates"]) == _logged_step(exp) >= 2


def test_sigterm_saves_a_resumable_state_and_exits_75(manifest_dir: Path, tmp_path: Path) -> None:
    settings = {"trainer__max_update": 40, "data__valid_subset": ""}
    exp = tmp_path / "exp"
    proc = subprocess.Popen(pretrain_argv(manifest_dir, exp, **settings), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while _logged_step(exp) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "rerun the same command to resume" in err and "Traceback" not in err
    stopped_at = int(read_state(exp / "checkpoints" / "last")["num_updates"])
    assert 3 <= stopped_at < 40 and stopped_at == _logged_step(exp)  # saved at the update it stopped on

    short = {"trainer__max_update": stopped_at + 2, "data__valid_subset": ""}
    reference = tmp_path / "reference"
    assert subprocess.run(pretrain_argv(manifest_dir, reference, **short), env=subprocess_env(),
                          capture_output=True, timeout=300).returncode == 0
    resumed = subprocess.run([*pretrain_argv(manifest_dir, exp, **short), "--allow-config-change"],
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    diff = max_abs_diff(read_weights(exp / "checkpoints" / "last"), read_weights(reference / "checkpoints" / "last"))
    assert diff <= 1e-6, f"max abs difference {diff:.3g}"


def test_failed_checkpoint_write_keeps_the_previous_one(manifest_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    import speechcl.training.checkpoints as checkpoints

    exp = tmp_path / "exp"
    argv = ["--config-name", "pretrain_cpu", *overrides(manifest_dir, exp, trainer__max_update=4,
                                                        trainer__save_interval=2, data__valid_subset="")]
    real_save, calls = torch.save, []

    def failing_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint (update 4): the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", failing_save)
    assert run_pretrain_verb(argv) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "is intact" in err and "rerun" in err
    manager = CheckpointManager(exp)
    assert manager.exists("last") and read_state(exp / "checkpoints" / "last")["num_updates"] == 2
    assert not list((exp / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert run_pretrain_verb(argv) == 0  # and the run resumes from it
    assert read_state(exp / "checkpoints" / "last")["num_updates"] == 4


def test_diverged_run_ends_in_a_message(manifest_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    real_forward = PretrainTask.forward

    def nan_forward(self: PretrainTask, *args: object) -> TaskOutput:
        out = real_forward(self, *args)  # type: ignore[arg-type]
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PretrainTask, "forward", nan_forward)
    argv = ["--config-name", "pretrain_cpu", *overrides(tmp_path, tmp_path / "exp", trainer__max_update=20,
                                                        trainer__max_consecutive_nonfinite=3,
                                                        data__valid_subset="")]
    argv = [a if not a.startswith("data.manifest_dir=") else f"data.manifest_dir={manifest_dir}" for a in argv]
    assert run_pretrain_verb(argv) == 2
    assert "3 consecutive updates had a non-finite loss" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fuzzed_manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The fuzzed folder prepared with headers only (so undecodable and NaN files enter the manifest),
    with letter labels for every item so fine-tuning can run on it too."""
    from speechcl.data.labels import write_dict
    from speechcl.data.manifest import read_manifest
    from speechcl.data.prepare import prepare_audio
    from speechcl.testing.fuzz import write_fuzzed_folder

    root = tmp_path_factory.mktemp("fuzzed")
    verdicts = write_fuzzed_folder(root / "audio")
    prepare_audio(root / "audio", root / "data", valid_percent=0.0)
    manifest = read_manifest(root / "data" / "train.tsv")
    (root / "data" / "train.wrd").write_text("".join("ABBA CAB\n" for _ in manifest.paths))
    (root / "data" / "train.ltr").write_text("".join("A B B A | C A B |\n" for _ in manifest.paths))
    write_dict(root / "data" / "dict.ltr.txt", [("|", 2), ("A", 3), ("B", 3), ("C", 1)])
    return root / "data", verdicts


def _fuzz_overrides(data: Path, exp: Path, **extra: object) -> list[str]:
    values = {"data.manifest_dir": data, "exp_dir": exp, "data.train_subset": "train", "data.valid_subset": "",
              "data.num_workers": 0, "data.max_tokens": 96000, "trainer.threads": 1, "trainer.log_interval": 1,
              "trainer.tensorboard": "false", "trainer.max_bad_item_share": 0.5, "trainer.device": "cpu"}
    return [f"{k}={v}" for k, v in (values | extra).items()]


def _bad_named(exp: Path) -> set[str]:
    return {Path(line.split("\t")[0]).name for line in (exp / "bad_items.tsv").read_text().splitlines()[1:]}


def test_fuzzed_folder_through_pretrain_and_finetune(fuzzed_manifest_dir: tuple[Path, dict[str, str]],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from speechcl.data.manifest import read_manifest

    data, verdicts = fuzzed_manifest_dir
    listed = {Path(p).name for p in read_manifest(data / "train.tsv").paths}
    decode_only = {Path(p).name for p, v in verdicts.items() if v in ("undecodable", "non-finite")}
    assert decode_only and decode_only <= listed  # headers only let them in

    pretrain = ["--config-name", "pretrain_cpu", "model=tiny", "data.max_sample_size=32000",
                "data.min_sample_size=8000", "trainer.max_update=8",
                *_fuzz_overrides(data, tmp_path / "pretrain")]
    assert run_pretrain_verb(pretrain) == 0, capsys.readouterr().err[-2000:]
    assert _bad_named(tmp_path / "pretrain") == decode_only
    weights = read_weights(tmp_path / "pretrain" / "checkpoints" / "last")
    assert all(torch.isfinite(t).all() for t in weights.values())

    from speechcl.training import commands

    finetune = ["finetune", "--config-name", "finetune_cpu", "model.preset=tiny", "model.init=",
                "data.max_sample_size=800000", "data.min_sample_size=0", "trainer.max_update=4",
                *_fuzz_overrides(data, tmp_path / "finetune")]
    import argparse

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="verb", required=True))
    args, extra = parser.parse_known_args(finetune)
    args.overrides = extra
    assert args.func(args) == 0, capsys.readouterr().err[-2000:]
    assert _bad_named(tmp_path / "finetune") == decode_only
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_ranks_with_unreadable_batches_equal_one_process(dirty_manifest_dir: Path, tmp_path: Path) -> None:
    """One item per batch, so every bad item makes a whole batch unreadable: the rank that draws it runs a
    zero-weight stand-in (DDP needs its backward) and the updates equal one process accumulating 2."""
    from tests.training.test_distributed import TIMEOUT, _torchrun

    settings = {"trainer__max_update": 8, "data__max_tokens": 32000, "trainer__max_bad_item_share": 0.5,
                "data__valid_subset": "", "schedule__warmup_updates": 1, "optim__lr": 0.002}
    env = subprocess_env()
    one = subprocess.run(pretrain_argv(dirty_manifest_dir, tmp_path / "one", trainer__update_freq=2, **settings),
                         env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = subprocess.run([*_torchrun(), "-m", "speechcl", "pretrain", "--config-name", "pretrain_cpu",
                          *overrides(dirty_manifest_dir, tmp_path / "ddp", **settings)],
                         env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-4000:]
    assert read_state(tmp_path / "ddp" / "checkpoints" / "last")["loader"]["position"] == 8  # a whole epoch
    assert (tmp_path / "ddp" / "bad_items.tsv").read_text() == (tmp_path / "one" / "bad_items.tsv").read_text()
    assert len((tmp_path / "ddp" / "bad_items.tsv").read_text().splitlines()) == 5  # header + 4, both ranks'
    diff = max_abs_diff(read_weights(tmp_path / "ddp" / "checkpoints" / "last"),
                        read_weights(tmp_path / "one" / "checkpoints" / "last"))
    assert diff <= 1e-5, f"max abs difference {diff:.3g}"


def test_failed_best_copy_keeps_both_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import speechcl.training.checkpoints as checkpoints
    from speechcl.models.config import preset
    from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining

    model = Wav2Vec2ForPretraining(preset("tiny"))
    manager = CheckpointManager(tmp_path)
    manager.save("last", model, {"num_updates": 1})
    manager.copy("last", "best")
    manager.save("last", model, {"num_updates": 2})

    def full_disk(src: object, dst: Path, *args: object, **kwargs: object) -> None:
        Path(dst).mkdir()
        (Path(dst) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.shutil, "copytree", full_disk)
    with pytest.raises(checkpoints.CheckpointWriteError, match="No space left on device.*as they were"):
        manager.copy("last", "best")
    assert read_state(tmp_path / "checkpoints" / "best")["num_updates"] == 1
    assert read_state(tmp_path / "checkpoints" / "last")["num_updates"] == 2
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
