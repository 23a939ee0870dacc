"""wav2vec 1.0 / CPC on the shared encoder: causality, padding invariance, short utterances, the logged
signals and the collapse guard (the CLI round trip is the contract test's)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import speechcl
from speechcl.methods import METHODS, build_method
from speechcl.methods.cpc import CPC, FuturePrediction, Wav2Vec
from speechcl.models.config import preset
from speechcl.models.feature_encoder import conv_geometry
from speechcl.models.wav2vec2 import encoder_of
from speechcl.objectives.wav2vec import FuturePairs, future_logits

CONF = Path(__file__).resolve().parents[2] / "conf" / "objective"


def _method(name: str, **settings: object) -> FuturePrediction:
    torch.manual_seed(0)
    model = build_method(preset("tiny", **settings.pop("model", {})), {"name": name, **settings})  # type: ignore[arg-type]
    assert isinstance(model, FuturePrediction)
    return model.eval()


def _batch(wav: torch.Tensor, padding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    b = wav.shape[0]
    mask = torch.zeros_like(wav, dtype=torch.bool) if padding is None else padding
    return {"source": wav, "padding_mask": mask, "id": torch.arange(b), "epoch": torch.zeros(b, dtype=torch.long)}


def test_registered_with_their_yaml_defaults() -> None:
    assert METHODS["wav2vec"] is Wav2Vec and METHODS["cpc"] is CPC
    for name, cls in (("wav2vec", Wav2Vec), ("cpc", CPC)):
        yaml = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
        assert yaml == {"name": name, **dataclasses.asdict(cls.Config())}
    assert (Wav2Vec.Config().num_negatives, CPC.Config().num_negatives) == (10, 128)


@pytest.mark.parametrize("name", ["wav2vec", "cpc"])
@pytest.mark.parametrize("aggregator", ["transformer", "conv"])
def test_context_and_pairs_do_not_see_the_future(name: str, aggregator: str, one_thread: None) -> None:
    model = _method(name, aggregator=aggregator, num_negatives=3)
    hop, field = conv_geometry(model.cfg.conv_layers)
    t0 = 30
    wav = torch.randn(1, 24000)
    later = wav.clone()
    later[:, t0 * hop + field:] = torch.randn(1, later.shape[1] - t0 * hop - field)  # only frames > t0 see it
    with torch.no_grad():
        a = model.predict(wav, None, torch.Generator().manual_seed(5))
        b = model.predict(later, None, torch.Generator().manual_seed(5))
    assert torch.equal(a.negatives, b.negatives)
    torch.testing.assert_close(a.context[:, : t0 + 1], b.context[:, : t0 + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(a.context[:, t0 + 1:], b.context[:, t0 + 1:], atol=1e-3)  # the change is real
    frames = torch.cat([a.pairs.target[:, None], a.negatives], 1)
    early = (frames <= t0).all(1)  # the pair ends by t0 and its distractors too
    assert int(early.sum()) > 20
    loss_a, loss_b = type(model).pair_loss(a.logits), type(model).pair_loss(b.logits)
    torch.testing.assert_close(loss_a[early], loss_b[early], rtol=0, atol=1e-4)
    torch.testing.assert_close(a.logits[a.pairs.target <= t0, 0], b.logits[a.pairs.target <= t0, 0], rtol=0, atol=1e-4)
    assert not torch.allclose(loss_a[~early], loss_b[~early], atol=1e-3)


def test_extract_features_is_causal_as_in_training(one_thread: None, tmp_path) -> None:
    model = _method("cpc").eval()
    hop, field = conv_geometry(model.cfg.conv_layers)
    wav = torch.randn(1, 16000)
    later = wav.clone()
    later[:, 20 * hop + field:] += 1.0
    # the model itself, and the bare encoder a loaded checkpoint gives the extractor, probes and s3prl wrapper
    loaded = encoder_of(speechcl.load_model(speechcl.save_checkpoint(model, tmp_path / "cpc"))).eval()
    for extract in (model.extract_features, loaded.extract_features):
        a, b = extract(wav), extract(later)
        assert len(a.hidden_states) == model.cfg.encoder_layers + 1
        for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
            torch.testing.assert_close(x[:, :21], y[:, :21], rtol=0, atol=1e-5)
        torch.testing.assert_close(a.hidden_states[-1], model.extract_features(wav).hidden_states[-1])


def _row_pairs(pairs: FuturePairs, row: int, t: int) -> FuturePairs:
    keep = pairs.context // t == row
    return FuturePairs(pairs.context[keep], pairs.target[keep], pairs.step[keep])


@pytest.mark.parametrize("name", ["wav2vec", "cpc"])
@pytest.mark.parametrize("extractor", ["layer_norm", "group_norm"])
def test_a_padded_row_scores_as_it_does_alone(name: str, extractor: str, one_thread: None) -> None:
    model = _method(name, model={"extractor_mode": extractor}, num_negatives=4)
    wav = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 9000:] = True
    with torch.no_grad():
        both = model.predict(wav, padding, torch.Generator().manual_seed(0))
        alone = model.predict(wav[1:, :9000], None, torch.Generator().manual_seed(0))
    t = both.targets.shape[1]
    assert alone.targets.shape[1] == 27 and int(both.valid[1].sum()) == 27
    assert bool(both.valid.flatten()[both.negatives].all())  # no distractor is a padded frame
    assert len(both.pairs) == len(_row_pairs(both.pairs, 0, t)) + len(alone.pairs)
    row = _row_pairs(both.pairs, 1, t)
    assert torch.equal(row.context - t, alone.pairs.context) and torch.equal(row.step, alone.pairs.step)
    with torch.no_grad():  # the batch's scores for the row, with the distractors the lone run drew
        logits = future_logits(both.preds, both.targets, row, t + alone.negatives, same_utterance=True)
    torch.testing.assert_close(logits, alone.logits, rtol=1e-4, atol=1e-4)
    loss = type(model).pair_loss
    torch.testing.assert_close(loss(logits), loss(alone.logits), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["wav2vec", "cpc"])
def test_short_utterances_give_the_pairs_they_have(name: str, one_thread: None) -> None:
    model = _method(name)
    hop, field = conv_geometry(model.cfg.conv_layers)
    wav = torch.randn(3, field + 4 * hop)  # 5 frames < K + 1
    padding = torch.zeros_like(wav, dtype=torch.bool)
    padding[1, field:] = True  # 1 frame: no pair
    padding[2, field + hop:] = True  # 2 frames: one pair
    out = model(_batch(wav, padding), torch.Generator().manual_seed(0))
    assert out.sample_size == sum(max(5 - k, 0) for k in range(1, 13)) + 0 + 1 == 11
    assert math.isfinite(float(out.loss.detach()))
    out.loss.backward()
    none = model(_batch(wav[:, :field]), torch.Generator().manual_seed(0))  # every row 1 frame
    assert none.sample_size == 0 and float(none.loss.detach()) == 0.0
    none.loss.backward()
    assert model.summarize(none.stats)["loss"] == 0.0


@pytest.mark.parametrize(("name", "chance_bits"), [("wav2vec", 11.0), ("cpc", math.log2(129))])
def test_logged_signals_at_zero_scores(name: str, chance_bits: float, one_thread: None) -> None:
    model = _method(name)
    with torch.no_grad():
        model.predictor.weight.zero_()
        if model.predictor.bias is not None:
            model.predictor.bias.zero_()
    out = model(_batch(torch.randn(2, 16000)), torch.Generator().manual_seed(0))
    s = model.summarize(out.stats)
    assert s["loss"] == pytest.approx(chance_bits, rel=1e-5)  # (N + 1) binary decisions / ln(N + 1) in bits
    assert s["accuracy"] == 0.0  # every score ties: never strictly first
    n = model.method_cfg.num_negatives
    assert 1 / (n + 1) <= s["chance"] < 1.0
    assert s["pairs"] == out.sample_size == sum(out.stats[f"pairs_k{k}"] for k in range(1, 13))
    assert out.stats["pairs_k1"] == 2 * 48 and out.stats["pairs_k12"] == 2 * 37
    assert 0 < s["z_std"] < 1 and 0 < s["c_std"] < 1


def test_per_step_accuracy_counts_each_steps_pairs(one_thread: None) -> None:
    model = _method("cpc", num_negatives=4)
    wav = torch.randn(2, 16000)
    out = model(_batch(wav), torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model.predict(wav, None, torch.Generator().manual_seed(0))
    first = pred.logits[:, 0] > pred.logits[:, 1:].max(1).values
    for k in range(1, 13):
        at_k = pred.pairs.step == k - 1
        assert out.stats[f"pairs_k{k}"] == int(at_k.sum())
        assert out.stats[f"correct_k{k}"] == int(first[at_k].sum())
    assert out.stats["correct"] == int(first.sum()) > 0


@pytest.mark.parametrize("name", ["wav2vec", "cpc"])
def test_the_model_learns_to_rank_the_future_first(name: str, one_thread: None) -> None:
    model = _method(name, num_negatives=8).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    wav = torch.sin(torch.arange(16000.0)[None] * torch.tensor([[0.05], [0.11]])) + 0.1 * torch.randn(2, 16000)
    accs = []
    for step in range(25):
        out = model(_batch(wav), torch.Generator().manual_seed(step))
        opt.zero_grad()
        (out.loss / out.sample_size).backward()
        opt.step()
        accs.append(model.summarize(out.stats)["accuracy"])
    summary = model.summarize(out.stats)
    assert accs[-1] > 2 * summary["chance"] and accs[-1] > accs[0]
    assert summary["pos_sim"] > summary["neg_sim"] + 0.05


def test_collapse_guard_fires_on_collapsed_targets(one_thread: None) -> None:
    model = _method("wav2vec")
    with torch.no_grad():
        model.encoder.layer_norm.weight.zero_()  # every frame's z is the LayerNorm bias: one vector
        model.encoder.layer_norm.bias.normal_()
    out = model(_batch(torch.randn(2, 16000)), torch.Generator().manual_seed(0))
    summary = model.summarize(out.stats)
    assert summary["z_std"] < 1e-6
    assert model.collapse(summary, 199) is None  # not armed yet
    message = model.collapse(summary, 200)
    assert message is not None and "z_std" in message and "collapse_spread" in message
    healthy = _method("wav2vec")
    ok = healthy.summarize(healthy(_batch(torch.randn(2, 16000)), torch.Generator().manual_seed(0)).stats)
    assert healthy.collapse(ok, 10_000) is None
    assert healthy.collapse(ok | {"c_std": 0.001}, 10_000) is not None
    assert healthy.collapse(ok | {"z_std": float("nan"), "c_std": float("nan")}, 10_000) is None


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="objective.aggregator"):
        build_method(preset("tiny"), {"name": "cpc", "aggregator": "lstm"})
    with pytest.raises(ValueError, match="objective.negatives"):
        build_method(preset("tiny"), {"name": "wav2vec", "negatives": "queue"})
    with pytest.raises(ValueError, match="objective.prediction_steps"):
        build_method(preset("tiny"), {"name": "wav2vec", "prediction_steps": 0})
