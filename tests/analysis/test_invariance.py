"""Invariance analysis: frame alignment through the time map, the built-in sanity (identity = 1 exactly, gain
invariance under per-utterance normalisation), pooled CKA, transformation parsing, the CLI end to end."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import speechcl
from speechcl.analysis import invariance_cli
from speechcl.analysis.cka import linear_cka
from speechcl.analysis.invariance import (
    CATALOGUE,
    align_frames,
    apply_transformation,
    frame_cosine,
    measure_invariance,
    parse_transformation,
    resolve_transformations,
    transformation,
)
from speechcl.features.extractor import FeatureExtractor
from speechcl.models.wav2vec2 import Wav2Vec2ForPretraining

HOP, FIELD = 320, 400


def _wave(seconds: float, seed: int) -> torch.Tensor:
    """A chirp plus a little noise: audio with structure the frames can tell apart."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t * (1 + 2 * t)) + 0.03 * rng.standard_normal(t.shape)
    return torch.from_numpy(x.astype(np.float32))


@pytest.fixture(scope="module")
def model() -> Wav2Vec2ForPretraining:
    torch.manual_seed(0)
    return Wav2Vec2ForPretraining(speechcl.preset("tiny")).eval()


def _encoder(model, normalize: bool = False):
    extractor = FeatureExtractor(model, "all", normalize=normalize)
    return lambda wave: extractor.extract([wave])[0]


# --- alignment ----------------------------------------------------------------------------------------------

def test_shift_by_one_hop_pairs_frame_k_with_frame_k_minus_one():
    a = align_frames(10, 10, 1.0, float(HOP), HOP, FIELD)
    assert a.target.tolist() == list(range(1, 10))
    assert a.lower.tolist() == list(range(0, 9))
    assert a.weight.tolist() == [0.0] * 9
    back = align_frames(10, 10, 1.0, -2.0 * HOP, HOP, FIELD)  # advanced by two hops
    assert back.target.tolist() == list(range(0, 8)) and back.lower.tolist() == list(range(2, 10))


def test_fractional_positions_interpolate_or_take_the_nearest_frame():
    half = align_frames(6, 6, 1.0, HOP / 2, HOP, FIELD)  # position k - 0.5
    assert half.target.tolist() == [1, 2, 3, 4, 5]
    assert half.lower.tolist() == [0, 1, 2, 3, 4] and half.upper.tolist() == [1, 2, 3, 4, 5]
    assert half.weight.tolist() == [0.5] * 5
    h = torch.arange(6, dtype=torch.float64)[:, None].repeat(1, 2)  # frame j holds the value j
    assert half.reference(h)[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    near = align_frames(6, 6, 1.0, 0.4 * HOP, HOP, FIELD, "nearest")  # position k - 0.4 -> frame k
    assert near.target.tolist() == near.lower.tolist() == list(range(6))
    ahead = align_frames(6, 6, 1.0, -0.6 * HOP, HOP, FIELD, "nearest")  # position k + 0.6 -> frame k + 1
    assert ahead.target.tolist() == [0, 1, 2, 3, 4] and ahead.lower.tolist() == [1, 2, 3, 4, 5]


def test_speed_scales_time_around_frame_centres():
    factor = 0.9
    a = align_frames(40, 36, 1 / factor, 0.0, HOP, FIELD)
    c = (FIELD - 1) / 2
    expected = ((a.target.double() * HOP + c) * factor - c) / HOP
    assert torch.allclose(a.lower.double() + a.weight, expected, atol=1e-12)
    # frame 0 of t(x) sits at -0.06 and frame 39 at 35.04: outside x's frames 0..35, so left out
    assert a.target.tolist() == list(range(1, 39))


def test_a_one_hop_shift_through_a_model_aligns_frame_k_with_frame_k_minus_one(model, one_thread):
    wave = _wave(1.0, 0)
    shifted, scale, offset = apply_transformation(transformation("s", "time_shift", shift_ms=20.0), wave)
    assert (scale, offset) == (1.0, 320.0) and torch.equal(shifted[320:], wave[:-320])
    conv = model.encoder.feature_extractor  # frame-local (layer-norm extractor), so equal content -> equal frames
    hx, ht = conv(wave[None])[0], conv(shifted[None])[0]
    a = align_frames(ht.shape[0], hx.shape[0], scale, offset, HOP, FIELD)
    assert a.target.tolist() == list(range(1, hx.shape[0])) and a.lower.tolist() == list(range(hx.shape[0] - 1))
    assert torch.allclose(frame_cosine(a.reference(hx), a.targets(ht)), torch.ones(len(a), dtype=torch.float64),
                          atol=1e-6)
    # through the whole model: hidden state 0 (after the positional conv) matches away from the edges
    hidden = _encoder(model)
    x0, t0 = hidden(wave)[0], hidden(shifted)[0]
    inner = slice(12, -12)
    assert torch.allclose(a.targets(t0)[inner], a.reference(x0)[inner], atol=1e-4)
    assert not torch.allclose(t0[1:][inner], x0[1:][inner], atol=1e-2)  # unaligned frames differ


# --- measures and sanity ------------------------------------------------------------------------------------

def test_frame_cosine_is_exactly_one_for_equal_frames():
    a = torch.randn(3, 7, 5)
    assert torch.equal(frame_cosine(a, a.clone()), torch.ones(3, 7, dtype=torch.float64))
    zero = torch.zeros(1, 4)
    assert frame_cosine(zero, zero).item() == 1.0 and frame_cosine(zero, torch.ones(1, 4)).item() == 0.0
    assert frame_cosine(a, -a).max().item() == pytest.approx(-1.0)


def test_identity_is_exactly_one_and_gain_is_invariant_under_normalisation(model, one_thread):
    waves = [_wave(0.6, 0), _wave(0.8, 1)]
    chosen = resolve_transformations(["identity", "gain_-6dB", "gain_+6dB"])
    for normalize in (False, True):
        tables = measure_invariance(_encoder(model, normalize), waves, chosen, hop=HOP, receptive_field=FIELD)
        assert tables.layers == [0, 1, 2]
        assert tables.cosine["identity"] == [1.0, 1.0, 1.0] and tables.cka["identity"] == [1.0, 1.0, 1.0]
        for label in ("gain_-6dB", "gain_+6dB"):
            cosine, cka = np.array(tables.cosine[label]), np.array(tables.cka[label])
            if normalize:
                assert np.allclose(cosine, 1.0, atol=1e-5) and np.allclose(cka, 1.0, atol=1e-5)
            else:  # the raw model is not gain-invariant (conv bias, GELU), so the check above can fail
                assert cosine.max() < 0.999
        assert tables.files["identity"] == 2 and tables.frames["identity"] == 29 + 39


def test_cka_pools_the_aligned_frames_of_all_files(model, one_thread):
    waves = [_wave(0.5, 0), _wave(0.7, 2)]
    encode = _encoder(model)
    t = parse_transformation("time_shift:shift_ms=10")
    tables = measure_invariance(encode, waves, [t], hop=HOP, receptive_field=FIELD, seed=3)
    xs, ys, cos = [], [], []
    for i, wave in enumerate(waves):
        moved, scale, offset = apply_transformation(t, wave, seed=3, item=i)
        hx, ht = encode(wave), encode(moved)
        a = align_frames(ht.shape[1], hx.shape[1], scale, offset, HOP, FIELD)
        xs.append(a.reference(hx)[2])
        ys.append(a.targets(ht)[2])
        cos.append(frame_cosine(xs[-1], ys[-1]).mean())
    assert tables.cka[t.label][2] == pytest.approx(linear_cka(torch.cat(xs), torch.cat(ys)), abs=1e-9)
    assert tables.cosine[t.label][2] == pytest.approx(float(sum(cos) / 2), abs=1e-12)
    assert tables.frames[t.label] == sum(len(x) for x in xs)


def test_speed_output_and_time_map(one_thread):
    wave = _wave(0.5, 1)
    faster, scale, offset = apply_transformation(CATALOGUE["speed_1.1"], wave)
    assert faster.shape[0] == math.ceil(wave.shape[0] / 1.1) and scale == pytest.approx(1 / 1.1) and offset == 0.0
    same, scale, offset = apply_transformation(CATALOGUE["identity"], wave)
    assert same is wave and (scale, offset) == (1.0, 0.0)


def test_noise_depends_on_seed_and_item_only():
    wave, t = _wave(0.3, 0), CATALOGUE["noise_white_10dB"]
    first = apply_transformation(t, wave, seed=1, item=4)[0]
    assert torch.equal(first, apply_transformation(t, wave, seed=1, item=4)[0])
    assert not torch.equal(first, apply_transformation(t, wave, seed=2, item=4)[0])
    assert not torch.equal(first, apply_transformation(t, wave, seed=1, item=5)[0])


def test_babble_uses_the_other_files_and_needs_two(model, one_thread):
    wave, other = _wave(0.5, 0), _wave(0.3, 1)
    mixed, _, _ = apply_transformation(CATALOGUE["babble_10dB"], wave, others=[other])
    assert mixed.shape == wave.shape and not torch.equal(mixed, wave)
    both = measure_invariance(_encoder(model), [wave, other], [CATALOGUE["babble_10dB"]], hop=HOP,
                              receptive_field=FIELD)
    assert both.files["babble_10dB"] == 2 and max(both.cosine["babble_10dB"]) < 0.999
    tables = measure_invariance(_encoder(model), [wave], [CATALOGUE["babble_10dB"]], hop=HOP, receptive_field=FIELD)
    assert tables.files["babble_10dB"] == 0 and math.isnan(tables.cosine["babble_10dB"][0])
    assert "at least 2" in tables.skipped[0]["reason"]


def test_too_short_inputs_are_skipped_not_fatal(model, one_thread):
    waves = [_wave(0.5, 0), _wave(0.02, 1)]  # 320 samples < the 400-sample receptive field
    tables = measure_invariance(_encoder(model), waves, [CATALOGUE["identity"]], hop=HOP, receptive_field=FIELD,
                                keys=["long", "short"])
    assert tables.files["identity"] == 1 and tables.skipped[0]["file"] == "short"


def test_transformation_tokens():
    assert parse_transformation("speed_0.9") is CATALOGUE["speed_0.9"]
    t = parse_transformation("noise:snr_db=5,color=brown")
    assert t.name == "noise" and t.kwargs == {"snr_db": 5, "color": "brown"} and t.label == "noise:snr_db=5,color=brown"
    assert parse_transformation("time_shift:shift_ms=20").time_map() == (1.0, 320.0)
    assert [t.label for t in resolve_transformations(None)] == list(CATALOGUE)
    assert len(resolve_transformations(["default", "speed:factor=0.95"])) == len(CATALOGUE) + 1
    for bad, message in (("warp", "neither a label"), ("noise", "one fixed value"), ("speed:factor=9", "lie in"),
                         ("gain:loud=3", "unknown key"), ("gain:db", "KEY=VALUE")):
        with pytest.raises(ValueError, match=message):
            parse_transformation(bad)
    with pytest.raises(ValueError, match="one fixed value"):
        transformation("range", "noise", snr_db=[5.0, 10.0])
    with pytest.raises(ValueError, match="more than once"):
        resolve_transformations(["gain_+6dB", "gain_+6dB"])


# --- end to end ---------------------------------------------------------------------------------------------

def _run_cli(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="speechcl")
    invariance_cli.register(parser.add_subparsers(dest="verb"))
    parsed = parser.parse_args(args)
    return parsed.func(parsed)


def test_cli_writes_deterministic_results(model, tmp_path, one_thread, capsys):
    ckpt = speechcl.save_checkpoint(model, tmp_path / "model")
    audio = tmp_path / "audio"
    (audio / "a").mkdir(parents=True)
    for i, seconds in enumerate((0.5, 0.7, 0.6)):
        sf.write(audio / "a" / f"u{i}.flac", _wave(seconds, i).numpy(), 16000)
    transforms = ["identity", "noise_white_10dB", "speed_0.9", "shift_20ms", "babble_10dB"]
    outputs = []
    for run, seed in enumerate((5, 5, 6)):
        out = tmp_path / f"out{run}"
        code = _run_cli(["analyze", "invariance", "--model", str(ckpt), "--input", str(audio), "--output", str(out),
                         "--transforms", *transforms, "--max-files", "2", "--seed", str(seed), "--device", "cpu",
                         "--threads", "1", "--no-progress"])
        assert code == 0
        assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "invariance_heatmap.png"}
        assert (out / "invariance_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        outputs.append(json.loads((out / "results.json").read_text()))
    first = outputs[0]
    assert first["layers"] == [0, 1, 2] and first["inputs"]["count"] == 2
    assert [t["label"] for t in first["transforms"]] == transforms
    assert first["transforms"][2]["time_map"]["scale"] == pytest.approx(1 / 0.9)
    assert all(row["identity"] == 1.0 for row in first["cosine"] + first["cka"])
    assert 0.0 < first["cosine"][2]["noise_white_10dB"] < 1.0
    for key in ("cosine", "cka"):
        assert first[key] == outputs[1][key]  # same seed: the same numbers
    assert first["cosine"] != outputs[2]["cosine"]  # another seed: other files and noise
    md = (tmp_path / "out0" / "results.md").read_text()
    assert "| layer | identity | noise_white_10dB |" in md and "| 0 | 1.000 |" in md
    assert "cosine at layer 2" in capsys.readouterr().out


def test_cli_reports_bad_arguments(tmp_path, capsys):
    code = _run_cli(["analyze", "invariance", "--model", str(tmp_path / "none"), "--input", str(tmp_path),
                     "--output", str(tmp_path / "out"), "--transforms", "warp", "--device", "cpu"])
    assert code == 2 and "neither a label" in capsys.readouterr().err


def test_cli_normalize_makes_the_model_gain_invariant(model, tmp_path, one_thread):
    ckpt = speechcl.save_checkpoint(model, tmp_path / "model", extra={"normalize": True})
    sf.write(tmp_path / "u.wav", _wave(0.5, 3).numpy(), 16000)
    out = tmp_path / "out"
    assert _run_cli(["analyze", "invariance", "--model", str(ckpt), "--input", str(tmp_path / "u.wav"),
                     "--output", str(out), "--transforms", "gain_+6dB", "--device", "cpu", "--no-progress"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["normalize"] is True  # what the checkpoint records
    assert all(row["gain_+6dB"] == pytest.approx(1.0, abs=1e-5) for row in result["cosine"])
