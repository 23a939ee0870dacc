"""What every pretraining method owes (DESIGN.md, "objective=<name>"): it trains from the CLI on the tiny
corpus, resumes to the uninterrupted run's weights (teacher, queue and bank included), loads with
``speechcl.load_model``, extracts features in the encoder's convention, and initialises CTC fine-tuning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import speechcl
from speechcl.methods import METHODS, Method
from speechcl.models.checkpoint import read_config
from speechcl.training.finetune import FinetuneModelConfig, build_ctc_model
from tests.interop.cli_helper import run_verb
from tests.training.helpers import max_abs_diff, overrides, read_weights, run_pretrain_verb

NAMES = sorted(METHODS)
LABELLED = {"hubert"}  # methods that train on `speechcl cluster` frame labels (their yaml sets data.frame_labels=km)


def _pretrain(manifest_dir: Path, exp: Path, name: str, *flags: str, **extra: object) -> int:
    settings = {"trainer__max_update": 4, "trainer__precision": "fp32"} | extra
    return run_pretrain_verb(["--config-name", "pretrain_cpu", *flags, f"objective={name}",
                              *overrides(manifest_dir, exp, **settings)])


@pytest.fixture(scope="module")
def labelled_dir(manifest_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session corpus with k-means frame labels <split>.km beside its manifests (MFCC, 8 clusters)."""
    import shutil

    from threadpoolctl import threadpool_limits

    from speechcl.cluster import KMeansConfig, MfccFeatures, cluster_manifests
    from speechcl.models.config import preset
    from tests.training.helpers import TRAIN, VALID

    out = tmp_path_factory.mktemp("labelled")
    for path in manifest_dir.iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    with threadpool_limits(1):
        cluster_manifests(out, [TRAIN, VALID], MfccFeatures(preset("tiny").conv_layers), KMeansConfig(8, n_init=2),
                          "km", progress=False)
    return out


def _data_dir(name: str, manifest_dir: Path, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("labelled_dir") if name in LABELLED else manifest_dir


@pytest.fixture(scope="module", params=NAMES)
def uninterrupted(request: pytest.FixtureRequest, manifest_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    saved = torch.get_num_threads()  # the learning tests' numbers depend on the thread count: restore it
    torch.set_num_threads(1)
    name = request.param
    exp = tmp_path_factory.mktemp(f"method_{name}")
    assert _pretrain(_data_dir(name, manifest_dir, request), exp, name, trainer__save_interval=2) == 0
    yield name, exp
    torch.set_num_threads(saved)


def test_trains_and_logs_from_the_cli(uninterrupted: tuple[str, Path]) -> None:
    name, exp = uninterrupted
    lines = [json.loads(line) for line in (exp / "log.jsonl").read_text().splitlines()]
    train = [line for line in lines if line.get("split") == "train"]
    assert [line["step"] for line in train] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in train)
    assert read_config(exp / "checkpoints" / "last")["objective"]["name"] == name
    assert json.loads((exp / "train_result.json").read_text())["num_updates"] == 4


def test_resumed_run_equals_the_uninterrupted_one(uninterrupted: tuple[str, Path], manifest_dir: Path,
                                                  tmp_path: Path, request: pytest.FixtureRequest) -> None:
    name, exp = uninterrupted
    data = _data_dir(name, manifest_dir, request)
    assert _pretrain(data, tmp_path, name, trainer__max_update=2, trainer__save_interval=2) == 0
    assert _pretrain(data, tmp_path, name, "--allow-config-change") == 0
    assert max_abs_diff(read_weights(exp / "checkpoints" / "last"), read_weights(tmp_path / "checkpoints" / "last")) == 0


def test_loads_extracts_and_initialises_fine_tuning(uninterrupted: tuple[str, Path]) -> None:
    name, exp = uninterrupted
    ckpt = exp / "checkpoints" / "last"
    model = speechcl.load_model(ckpt)
    assert isinstance(model, Method) and model.name == name
    assert max_abs_diff({k: v for k, v in model.state_dict().items()}, read_weights(ckpt)) == 0
    wav = torch.randn(2, 8000)
    out = model.extract_features(wav)
    assert len(out.hidden_states) == model.cfg.encoder_layers + 1
    assert out.hidden_states[-1].shape == (2, 24, model.cfg.encoder_embed_dim)
    assert out.lengths.tolist() == [24, 24]
    ctc = build_ctc_model(FinetuneModelConfig(init=str(ckpt)), vocab_size=5)
    assert max_abs_diff(ctc.encoder.state_dict(), model.encoder.state_dict()) == 0


def test_extract_verb_reads_the_checkpoint(uninterrupted: tuple[str, Path], tmp_path: Path) -> None:
    import soundfile as sf

    _, exp = uninterrupted
    sf.write(tmp_path / "a.wav", torch.randn(12000).clamp(-1, 1).numpy() * 0.1, 16000)
    assert run_verb("speechcl.features.commands", ["extract", "--model", str(exp / "checkpoints" / "last"),
                                                   "--input", str(tmp_path / "a.wav"), "--output",
                                                   str(tmp_path / "feats"), "--device", "cpu"]) == 0
    assert any((tmp_path / "feats").iterdir())
