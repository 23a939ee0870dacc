"""A wheel built from the repository and installed without ``-e`` runs ``speechcl pretrain`` from another
folder: with the configs that ship in the wheel, and with a user config folder given by ``--config-dir``.

The wheel goes into a fresh virtual environment; a ``.pth`` line lends it this interpreter's site-packages
for torch and the other dependencies (the line adds the folder to ``sys.path`` without running the
``.pth`` files in it, so this checkout's editable install stays out). Every command runs in an empty
folder with ``PYTHONPATH`` unset, so the repository is not importable there.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from tests.training.helpers import overrides, subprocess_env

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "speechcl", "conf")

pytestmark = pytest.mark.slow


@dataclass
class Installed:
    venv: Path
    wheel: Path
    workdir: Path  # an empty folder outside the repository, the cwd of every command

    def run(self, *argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
        env = subprocess_env()
        env.pop("PYTHONPATH", None)
        env.pop("SPEECHCL_CONF", None)
        proc = subprocess.run([str(a) for a in argv], cwd=self.workdir, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc


def _run(*argv: str | Path) -> None:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"  # a copy, so that the build leaves nothing in the working tree
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", root / "dist", source)
    (wheel,) = (root / "dist").glob("speechcl-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
         "--quiet", wheel)
    (purelib,) = {Path(p) for p in (venv / "lib").glob("python*/site-packages")}
    (purelib / "speechcl_test_dependencies.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    workdir = root / "elsewhere"
    workdir.mkdir()
    return Installed(venv, wheel, workdir)


def test_the_wheel_holds_every_shipped_config(installed: Installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    shipped = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert shipped and [p for p in shipped if f"speechcl/conf/{p}" not in names] == []


def test_the_repository_is_not_importable_where_the_commands_run(installed: Installed):
    """speechcl resolves to the wheel's copy; neither the checkout nor its editable-install finder is on the
    import path (found without importing speechcl, which would cost a torch import)."""
    probe = ("import importlib.util, json, sys; print(json.dumps([importlib.util.find_spec('speechcl').origin, "
             "[type(f).__module__ + type(f).__name__ for f in sys.meta_path] "
             "+ [getattr(f, '__module__', '') for f in sys.meta_path], sys.path]))")
    origin, finders, path = json.loads(installed.run(installed.venv / "bin" / "python", "-c", probe).stdout)
    assert Path(origin).is_relative_to(installed.venv)
    assert not [f for f in finders if "editable" in f.lower()]
    assert REPO not in [Path(p or installed.workdir).resolve() for p in path]


def test_print_config_with_the_shipped_configs(installed: Installed):
    proc = installed.run(installed.venv / "bin" / "speechcl", "pretrain", "--config-name", "pretrain_cpu",
                         "--print-config", "model=tiny", "data.manifest_dir=somewhere")
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.model.encoder_layers == 2 and cfg.trainer.device == "cpu" and cfg.data.manifest_dir == "somewhere"
    assert cfg.exp_dir == "exp/pretrain_cpu" and cfg.optim.betas == [0.9, 0.98]


def _noise_manifest(folder: Path, seconds: tuple[float, ...] = (1.5, 2.0, 1.8, 2.2, 1.6, 2.1)) -> Path:
    """``folder/train.tsv`` over a few seconds of generated noise."""
    audio = folder / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [str(audio)]
    for i, length in enumerate(seconds):
        samples = int(16_000 * length)
        sf.write(audio / f"{i}.flac", (0.1 * rng.standard_normal(samples)).astype(np.float32), 16_000)
        lines.append(f"{i}.flac\t{samples}")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_pretraining_with_the_shipped_configs(installed: Installed, tmp_path: Path):
    data = _noise_manifest(tmp_path / "data")
    exp = tmp_path / "exp"
    argv = overrides(data, exp, trainer__max_update=2, data__train_subset="train", data__valid_subset="")
    proc = installed.run(installed.venv / "bin" / "python", "-m", "speechcl", "pretrain", "--config-name",
                         "pretrain_cpu", *argv)
    assert "done: 2 updates" in proc.stdout
    assert (exp / "checkpoints" / "last" / "model.safetensors").is_file()
    saved = OmegaConf.load(exp / "config.yaml")
    assert saved.model.encoder_layers == 2 and saved.optim.lr == 0.0005  # model=tiny over pretrain_cpu


def test_a_user_config_folder_is_picked_up(installed: Installed, tmp_path: Path):
    user = tmp_path / "my conf"
    (user / "model").mkdir(parents=True)
    (user / "my_pretrain.yaml").write_text(
        "defaults:\n  - model: small\n  - data: synthetic\n  - optim: adam\n  - schedule: polynomial\n"
        "  - trainer: cpu\n  - _self_\n\nexp_dir: exp/mine\nloss:\n  diversity_weight: 0.2\n"
        "  feature_pen_weight: 0.0\n")
    (user / "model" / "foo.yaml").write_text("defaults:\n  - tiny\n  - _self_\n\nencoder_layers: 3\n")
    proc = installed.run(installed.venv / "bin" / "speechcl", "pretrain", "--config-dir", user, "--config-name",
                         "my_pretrain", "--print-config", "model=foo")
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.exp_dir == "exp/mine" and cfg.loss.diversity_weight == 0.2  # the user's top-level config
    assert cfg.model.encoder_layers == 3 and cfg.model.encoder_embed_dim == 64  # the user's model on shipped tiny
    assert cfg.trainer.device == "cpu" and cfg.schedule.kind == "polynomial"  # shipped groups
