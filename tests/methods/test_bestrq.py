"""BEST-RQ: target codes against an explicit nearest-neighbour search, the frame alignment with the encoder for
odd lengths, the frozen quantizer (no gradient, no optimizer step, saved and reloaded, seeded), the masked-only
cross-entropy against a hand computation, the span-start probability, the statistics and the collapse guards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchaudio.transforms import MelSpectrogram

import speechcl
from speechcl.methods.bestrq import BestRQ, BestRQConfig
from speechcl.models.checkpoint import load_checkpoint, read_safetensors, save_checkpoint
from speechcl.objectives.bestrq import bestrq_loss, code_perplexity, random_projection_codes, stack_frames
from speechcl.training.pretrain import MethodTask
from speechcl.training.trainer import CollapseError, OptimConfig, build_optimizer
from tests.methods.helpers import random_batch, seeded

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**cfg: object) -> BestRQ:
    torch.manual_seed(0)
    return BestRQ(speechcl.preset("tiny"), BestRQConfig(**({"codebook_size": 32} | cfg)))


def _nearest(x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codes by an explicit search: for every row and codebook, the L2-nearest unit code of the unit projection."""
    codes = torch.empty(x.shape[0], projection.shape[0], dtype=torch.long)
    for n in range(x.shape[0]):
        for g in range(projection.shape[0]):
            z = x[n] @ projection[g]
            z = z / z.norm()
            dists = [float((z - c / c.norm()).norm()) for c in codebook[g]]
            codes[n, g] = min(range(len(dists)), key=dists.__getitem__)
    return codes


def test_codes_equal_an_explicit_nearest_neighbour_search() -> None:
    g = seeded(0)
    x, projection = torch.randn(40, 6, generator=g), torch.randn(2, 6, 3, generator=g)
    codebook = torch.randn(2, 5, 3, generator=g)
    codes = random_projection_codes(x, projection, codebook)
    assert torch.equal(codes, _nearest(x, projection, codebook))
    assert len(set(codes[:, 0].tolist())) > 2  # the search is not trivially one code


def test_method_targets_equal_a_hand_pipeline_on_an_odd_length() -> None:
    model = _model(num_codebooks=2, codebook_size=7)
    wave = torch.randn(1, 8101, generator=seeded(1)) * 0.1  # odd: 49 mel frames for 25 encoder frames
    frames = model.encoder(wave).x.shape[1]
    codes = model.targets(wave, torch.tensor([8101]), frames)
    mel = MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80, center=False)(wave[0])  # [80, M]
    feats = (mel + 1e-6).log().T  # [M, 80]
    feats = (feats - feats.mean(0)) / (feats.var(0, unbiased=False) + 1e-5).sqrt()
    last = len(feats) - 1
    rows = [torch.cat([feats[min(2 * t, last)], feats[min(2 * t + 1, last)]]) for t in range(frames)]
    assert len(feats) == 2 * frames - 1
    expected = _nearest(torch.stack(rows), model.projection, model.codebook)
    assert torch.equal(codes[0], expected)


@pytest.mark.parametrize("samples", [8000, 8013, 8160, 8319, 8320, 8479, 8481])
def test_targets_have_the_encoders_frame_count(samples: int) -> None:
    model = _model().eval()
    wave = torch.randn(2, samples, generator=seeded(samples)) * 0.1
    out = model.predict(wave, None, seeded(0))
    assert out.codes.shape == (2, model.encoder(wave).x.shape[1], 1) == (*out.mask.shape, 1)


def test_stacking_pads_with_the_last_frame_and_trims_extra_frames() -> None:
    feats = torch.arange(2 * 5 * 1, dtype=torch.float).view(2, 5, 1)  # row 0: 0..4, row 1: 5..9
    out = stack_frames(feats, torch.tensor([5, 3]), num_frames=3, stack=2)
    assert out[0].tolist() == [[0, 1], [2, 3], [4, 4]]  # 5 mel frames for 3 encoder frames: the last repeated
    assert out[1].tolist() == [[5, 6], [7, 7], [7, 7]]  # 3 valid frames: padding never read
    assert stack_frames(feats, torch.tensor([5, 5]), num_frames=2, stack=2)[0].tolist() == [[0, 1], [2, 3]]


def test_padded_rows_get_the_codes_they_get_alone() -> None:
    model = _model()
    wave = torch.randn(2, 9000, generator=seeded(2)) * 0.1
    lengths = torch.tensor([9000, 7001])
    batched = model.targets(wave, lengths, 28)
    alone = model.targets(wave[1:, :7001], lengths[1:], 21)
    assert torch.equal(batched[1, :21], alone[0])


def test_quantizer_is_frozen_saved_and_seeded(tmp_path: Path) -> None:
    model = _model().train()
    names = {n for n, _ in model.named_parameters()}
    assert "projection" not in names and "codebook" not in names
    before = (model.projection.clone(), model.codebook.clone())
    assert torch.allclose(model.codebook.norm(dim=-1), torch.ones(1, 32))
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    out = model(random_batch([0, 1], seed=3), seeded(4))
    out.loss.backward()
    assert model.projection.grad is None and model.codebook.grad is None
    assert model.classifier.weight.grad is not None
    opt.step()
    assert torch.equal(model.projection, before[0]) and torch.equal(model.codebook, before[1])
    save_checkpoint(model, tmp_path / "ckpt")
    stored = read_safetensors(tmp_path / "ckpt" / "model.safetensors")
    assert torch.equal(stored["projection"], before[0]) and torch.equal(stored["codebook"], before[1])
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.projection, before[0]) and torch.equal(loaded.codebook, before[1])
    torch.manual_seed(123)  # the global RNG does not draw the quantizer
    again = BestRQ(speechcl.preset("tiny"), BestRQConfig(codebook_size=32))
    assert torch.equal(again.projection, before[0]) and torch.equal(again.codebook, before[1])
    other = _model(quantizer_seed=1)
    assert not torch.equal(other.projection, before[0])


def test_projection_is_xavier_uniform() -> None:
    model = _model(codebook_size=8192)  # [160, 16]: bound sqrt(6 / (160 + 16))
    bound = math.sqrt(6 / (160 + 16))
    assert model.projection.shape == (1, 160, 16) and float(model.projection.abs().max()) <= bound
    assert float(model.projection.abs().max()) > 0.95 * bound
    assert model.codebook.shape == (1, 8192, 16)


def test_loss_is_the_cross_entropy_of_masked_frames_only() -> None:
    model = _model(num_codebooks=2, codebook_size=16).eval()  # eval: no dropout, so passes repeat exactly
    batch = random_batch([0, 1], seed=5, samples=16000)
    out = model(batch, seeded(6))
    pred = model.predict(batch["source"], None, seeded(6))  # the same mask from the same generator
    with torch.no_grad():
        logits = model.classifier(model.encoder(batch["source"], mask_indices=pred.mask).x).view(2, -1, 2, 16)
    hand, count = 0.0, 0
    for b in range(2):
        for t in range(pred.mask.shape[1]):
            if pred.mask[b, t]:
                count += 1
                for g in range(2):
                    hand -= float(torch.log_softmax(logits[b, t, g], -1)[pred.codes[b, t, g]]) / 2
    assert 0 < count < pred.mask.numel() and out.sample_size == count
    assert float(out.loss.detach()) == pytest.approx(hand, rel=1e-5)


def test_bestrq_loss_against_hand_values() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # N 1, G 2, V 3
    out = bestrq_loss(logits, torch.tensor([[0, 2]]))
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce1 = -math.log(1 / (math.e + 2))
    assert float(out.loss) == pytest.approx((ce0 + ce1) / 2)
    assert out.correct == 1 and out.predicted.tolist() == [[0, 1]]


def test_span_start_probability_maps_to_the_encoder_mask() -> None:
    model = _model()
    mask = model.draw_mask(torch.full((64,), 1000), 1000, seeded(7))
    expected = 1 - 0.99**20  # frames covered when each starts a 20-frame span with probability 0.01
    assert abs(float(mask.double().mean()) - expected) < 0.02
    short = model.draw_mask(torch.tensor([30, 30]), 30, seeded(8))
    assert (short.sum(1) >= 20).all()  # mask_min_masks: one span at least


def test_statistics_and_perplexity() -> None:
    assert code_perplexity(torch.tensor([0, 0, 1, 1]), 8) == pytest.approx(2.0)
    assert code_perplexity(torch.tensor([3, 3, 3]), 8) == pytest.approx(1.0)
    assert code_perplexity(torch.arange(8), 8) == pytest.approx(8.0)
    model = _model()
    summary = model.summarize(model(random_batch([0, 1], seed=9), seeded(10)).stats)
    assert summary["chance"] == 1 / 32 and 0 < summary["majority"] <= 1
    assert summary["code_perplexity"] > 5 and 1 <= summary["pred_perplexity"] <= 32
    assert summary["loss"] == pytest.approx(math.log2(32), rel=0.3)


def test_constant_audio_stops_the_run_with_a_clear_message() -> None:
    model = _model()
    batch = random_batch([0, 1], seed=11)
    batch["source"] = torch.full_like(batch["source"], 0.05)
    summary = model.summarize(model(batch, seeded(12)).stats)
    assert summary["code_perplexity"] == pytest.approx(1.0)
    with pytest.raises(CollapseError, match="target codes are degenerate"):
        MethodTask(model).check(summary, 1)


def test_prediction_collapse_is_armed_after_collapse_after() -> None:
    model = _model(collapse_after=50)
    summary = {"code_perplexity": 30.0, "pred_perplexity": 1.0}
    assert model.collapse(summary, 49) is None
    assert "predictions have collapsed" in model.collapse(summary, 50)
    assert model.collapse({"code_perplexity": 30.0, "pred_perplexity": 3.0}, 500) is None


def test_config_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="objective.mask_prob"):
        BestRQConfig(mask_prob=0.1, mask_length=20)
    with pytest.raises(ValueError, match="objective.feature_norm"):
        BestRQConfig(feature_norm="global")


def test_stuck_warning_clears_when_the_majority_code_dominates() -> None:
    from speechcl.methods.bestrq import STUCK_AFTER

    model = _model()
    dominated = {"accuracy": 0.95, "chance": 1 / 32, "majority": 0.8}  # 1.5 x 0.8 > 1: the bar is 0.9
    assert not model.check(dominated, STUCK_AFTER) and model.check({**dominated, "accuracy": 0.85}, STUCK_AFTER)
    assert model.check({"accuracy": 0.1, "chance": 1 / 32, "majority": 0.1}, STUCK_AFTER)
    assert not model.check({"accuracy": 0.16, "chance": 1 / 32, "majority": 0.1}, STUCK_AFTER)
