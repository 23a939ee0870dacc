"""Waveform augmentation: each transform's defining property, the seeded chain's determinism and batch
invariance, padding, config errors, the Hydra group and the CTC fine-tuning hook."""

from __future__ import annotations

import math

import pytest
import torch

from speechcl.audio.augment import (
    NOISE_COLORS,
    TRANSFORMS,
    AugmentConfig,
    Augmenter,
    add_noise,
    apply_gain,
    band_limit,
    clip,
    colored_noise,
    mu_law,
    pitch_shift,
    reverberate,
    speed_perturb,
    synthetic_rir,
    time_map,
    time_shift,
)

SR = 16000


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _speechlike(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, max(lengths)]`` zero-padded test signals (harmonics with an envelope plus a little noise) and their
    padding mask."""
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    t = torch.arange(S) / SR
    wave = torch.zeros(len(lengths), S)
    for b, n in enumerate(lengths):
        f0 = 100 + 40 * b
        row = sum(torch.sin(2 * math.pi * f0 * k * t + k) / k for k in range(1, 6))
        row = row * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t)) + 0.01 * torch.randn(S, generator=g)
        wave[b, :n] = 0.3 * row[:n]
    mask = torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]
    return wave, mask


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return float(10 * torch.log10(clean.square().sum() / (noisy - clean).square().sum()))


def _tone(freq: float, n: int = SR) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n) / SR)[None, :]


def _peak_hz(x: torch.Tensor) -> float:
    spec = torch.fft.rfft(x[0] * torch.hann_window(x.shape[1]))
    return float(spec.abs().argmax()) * SR / x.shape[1]


def _one(name: str, **params) -> Augmenter:
    return Augmenter([{"name": name, **params}])


LENGTHS = [8000, 5000, 3000, 6400]
IDS = torch.tensor([11, 5, 42, 7])


# --- defining properties -------------------------------------------------------------------------------------

@pytest.mark.parametrize("color", sorted(NOISE_COLORS))
def test_noise_reaches_the_target_snr_over_valid_samples(color):
    wave, mask = _speechlike(LENGTHS)
    out, out_mask = _one("noise", snr_db=[5, 20], color=color)(wave, mask, IDS, 3)
    assert torch.equal(out_mask, mask) and bool((out[mask] == 0).all())
    snrs = [_snr_db(wave[b, :n], out[b, :n]) for b, n in enumerate(LENGTHS)]
    for b, n in enumerate(LENGTHS):  # the drawn target, recomputed from the same fixed-SNR chain
        fixed, _ = _one("noise", snr_db=12.5, color=color)(wave[b:b + 1, :n], None, IDS[b:b + 1], 3)
        assert abs(_snr_db(wave[b, :n], fixed[0]) - 12.5) < 0.5
    assert all(5 - 0.5 < s < 20 + 0.5 for s in snrs) and max(snrs) - min(snrs) > 0.5  # drawn per item
    pure = add_noise(wave, 7.0, color, torch.Generator().manual_seed(0), torch.tensor(LENGTHS))
    assert all(abs(_snr_db(wave[b, :n], pure[b, :n]) - 7.0) < 0.5 for b, n in enumerate(LENGTHS))


@pytest.mark.parametrize("color", ["pink", "brown", "blue"])
def test_noise_colour_has_its_spectral_slope(color):
    noise = torch.stack([colored_noise(4096, color, torch.Generator().manual_seed(s)) for s in range(16)])
    psd = torch.fft.rfft(noise).abs().square().mean(0)[8:1800]
    f = torch.arange(8, 1800, dtype=torch.float32)
    x, y = f.log(), psd.log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum())
    assert abs(slope + NOISE_COLORS[color]) < 0.15


def test_babble_mixes_other_rows_at_the_target_snr():
    wave, mask = _speechlike(LENGTHS)
    out, _ = _one("babble", snr_db=10, speakers=2)(wave, mask, IDS, 0)
    for b, n in enumerate(LENGTHS):
        assert abs(_snr_db(wave[b, :n], out[b, :n]) - 10) < 0.5
        residual = out[b, :n] - wave[b, :n]  # made of the other rows: the row itself explains none of it
        own = float((residual @ wave[b, :n]).abs() / (residual.norm() * wave[b, :n].norm()))
        assert own < 0.2
    assert bool((out[mask] == 0).all())
    alone, _ = _one("babble", snr_db=10)(wave[:1], None, IDS[:1], 0)
    assert torch.equal(alone, wave[:1])  # nobody else to babble


def test_gain_rms_ratio_and_polarity():
    wave, mask = _speechlike(LENGTHS)
    out, _ = _one("gain", db=-4.5)(wave, mask, IDS, 0)
    valid = ~mask
    ratio = out[valid].square().mean().sqrt() / wave[valid].square().mean().sqrt()
    assert float(20 * torch.log10(ratio)) == pytest.approx(-4.5, abs=1e-3)
    assert torch.allclose(apply_gain(wave, torch.tensor([0.0, 6.0, 0.0, 0.0]))[1], wave[1] * 10 ** 0.3)
    flipped, _ = _one("polarity")(wave, mask, IDS, 0)
    assert torch.equal(flipped, -wave)


def test_time_shift_moves_content_and_matches_its_time_map():
    wave, mask = _speechlike(LENGTHS)
    out, _ = _one("time_shift", shift_ms=10)(wave, mask, IDS, 0)
    s = 160
    assert time_map("time_shift", shift_ms=10) == (1.0, float(s))
    for b, n in enumerate(LENGTHS):
        assert torch.equal(out[b, s:n], wave[b, :n - s]) and bool((out[b, :s] == 0).all())
    back = time_shift(wave, -s, torch.tensor(LENGTHS))
    assert torch.equal(back[0, :LENGTHS[0] - s], wave[0, s:LENGTHS[0]]) and bool((back[0, LENGTHS[0] - s:] == 0).all())


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.37])
def test_speed_changes_length_and_frequency_by_the_factor(factor):
    wave, mask = _speechlike(LENGTHS)
    out, out_mask = _one("speed", factor=factor)(wave, mask, IDS, 0)
    new = [math.ceil(n / factor) for n in LENGTHS]
    assert (~out_mask).sum(1).tolist() == new and out.shape[1] == max(new)
    assert bool((out[out_mask] == 0).all())
    assert time_map("speed", factor=factor) == pytest.approx((1 / factor, 0.0))
    tone, lengths = speed_perturb(_tone(1000.0), factor)
    assert int(lengths[0]) == math.ceil(SR / factor)
    assert _peak_hz(tone) == pytest.approx(1000 * factor, abs=2)


def test_speed_without_padding_mask_returns_one_when_lengths_differ():
    wave, _ = _speechlike([4000, 4000])
    same, none = _one("speed", factor=1.1)(wave, None, IDS[:2], 0)
    assert none is None and same.shape[1] == math.ceil(4000 / 1.1)
    mixed, mask = _one("speed", factor={"choice": [0.9, 1.1]})(wave, None, torch.tensor([0, 3]), 0)
    lengths = sorted((~mask).sum(1).tolist())
    assert lengths == [math.ceil(4000 / 1.1), math.ceil(4000 / 0.9)]


def test_pitch_shift_keeps_length_and_moves_a_tone():
    up = pitch_shift(_tone(440.0), 12.0)
    assert up.shape == (1, SR) and _peak_hz(up) == pytest.approx(880, abs=10)
    level = _tone(440.0).square().mean().sqrt()
    for part in (up[:, :SR // 4], up[:, -SR // 4:]):  # the duration is kept: the tone fills the whole row
        assert float(part.square().mean().sqrt() / level) == pytest.approx(1.0, abs=0.15)
    down = pitch_shift(_tone(1000.0), -5.0)
    assert _peak_hz(down) == pytest.approx(1000 * 2 ** (-5 / 12), rel=0.02)
    wave, mask = _speechlike(LENGTHS)
    out, out_mask = _one("pitch", semitones=3)(wave, mask, IDS, 0)
    assert torch.equal(out_mask, mask) and bool((out[mask] == 0).all())


def test_clip_bounds_the_wave_at_the_level_of_its_peak():
    wave, mask = _speechlike(LENGTHS)
    out, _ = _one("clip", level=0.5)(wave, mask, IDS, 0)
    bound = 0.5 * wave.abs().amax(1, keepdim=True)
    assert bool((out.abs() <= bound + 1e-7).all())
    inside = wave.abs() < bound
    assert torch.equal(out[inside], wave[inside]) and bool((out.abs() >= bound - 1e-7)[~inside & ~mask].all())
    assert torch.equal(clip(wave, 1.0), wave)


@pytest.mark.parametrize("bits", [4, 8])
def test_mu_law_leaves_at_most_2_to_the_bits_levels(bits):
    wave, mask = _speechlike(LENGTHS)
    out, _ = _one("mu_law", bits=bits)(wave, mask, IDS, 0)
    for b, n in enumerate(LENGTHS):
        levels = out[b, :n].unique().numel()
        assert 2 ** (bits - 2) < levels <= 2 ** bits
    error = float((mu_law(wave, 8) - wave).abs().max() / wave.abs().max())
    assert error < 0.05


def test_band_limit_attenuates_out_of_band_tones():
    def level_db(freq: float, **kw) -> float:
        x = _tone(freq)
        y = band_limit(x, **kw)
        return float(20 * torch.log10(y[:, 1000:-1000].square().mean().sqrt() / x.square().mean().sqrt()))

    assert abs(level_db(1000)) < 0.5 and abs(level_db(3000)) < 0.5
    assert level_db(100) < -30 and level_db(6000) < -30
    assert level_db(5000, low_hz=0, high_hz=4000) < -30 and abs(level_db(150, low_hz=0, high_hz=4000)) < 0.5


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_synthetic_rir_decays_by_60_db_in_rt60(rt60):
    rir = synthetic_rir(rt60, SR, drr_db=-30.0, generator=torch.Generator().manual_seed(1))
    assert rir.shape == (math.ceil(rt60 * SR),) and float(rir[0]) == 1.0
    tail = rir.clone()
    tail[0] = 0
    edc = tail.square().flip(0).cumsum(0).flip(0)  # Schroeder backward integration
    edc_db = 10 * torch.log10(edc / edc[0])
    t5, t25 = int((edc_db < -5).nonzero()[0]), int((edc_db < -25).nonzero()[0])
    estimated = 60 * (t25 - t5) / SR / 20
    assert estimated == pytest.approx(rt60, rel=0.15)
    for drr in (0.0, 12.0):  # direct-to-reverberant energy ratio
        rir = synthetic_rir(rt60, SR, drr_db=drr, generator=torch.Generator().manual_seed(1))
        assert float(10 * torch.log10(rir[0] ** 2 / rir[1:].square().sum())) == pytest.approx(drr, abs=1e-3)


def test_reverb_keeps_rms_and_smears_an_impulse():
    x = torch.zeros(1, 8000)
    x[0, 100] = 1.0
    rir = synthetic_rir(0.4, SR, 0.0, torch.Generator().manual_seed(2))
    wet = reverberate(x, rir)
    assert float(wet.square().mean().sqrt()) == pytest.approx(float(x.square().mean().sqrt()), rel=1e-4)
    assert float(wet[0, :100].abs().max()) < 1e-6 and float(wet[0, 100:].abs().gt(1e-4).sum()) > 1000
    early, late = wet[0, 1100:2100].square().sum(), wet[0, 4100:5100].square().sum()
    assert float(early) > 10 * float(late)  # energy decays
    wave, mask = _speechlike(LENGTHS)
    out, _ = _one("reverb", rt60=0.5)(wave, mask, IDS, 0)
    assert bool((out[mask] == 0).all()) and not torch.allclose(out, wave)


def test_time_mask_zeros_the_drawn_spans():
    wave, mask = _speechlike(LENGTHS)
    wave = wave.masked_fill(~mask & (wave == 0), 1e-3)
    out, _ = _one("time_mask", count=1, width_ms=10)(wave, mask, IDS, 0)
    for b, n in enumerate(LENGTHS):
        zeros = (out[b, :n] == 0).nonzero().flatten()
        assert zeros.numel() == 160 and int(zeros[-1] - zeros[0]) == 159
        keep = out[b, :n] != 0
        assert torch.equal(out[b, :n][keep], wave[b, :n][keep])


# --- the chain -----------------------------------------------------------------------------------------------

FULL = [{"name": "noise"}, {"name": "babble", "snr_db": 15}, {"name": "gain"}, {"name": "polarity"},
        {"name": "time_shift"}, {"name": "speed", "factor": [0.85, 1.15]}, {"name": "pitch"}, {"name": "reverb"},
        {"name": "band_limit"}, {"name": "clip"}, {"name": "mu_law"}, {"name": "time_mask"}]


def test_every_transform_is_in_the_full_chain():
    assert sorted(t["name"] for t in FULL) == sorted(TRANSFORMS)


def test_identity_at_probability_zero_returns_the_inputs():
    wave, mask = _speechlike(LENGTHS)
    for cfg in ([], [{**t, "p": 0.0} for t in FULL], AugmentConfig()):
        aug = Augmenter(cfg)
        assert aug.identity
        out, out_mask = aug(wave, mask, IDS, 0)
        assert out is wave and out_mask is mask
    half = Augmenter([{"name": "gain", "p": 0.5, "db": 6}])
    out, _ = half(wave, mask, torch.arange(4), 0)
    changed = [not torch.equal(out[b], wave[b]) for b in range(4)]
    assert not half.identity and any(changed) and not all(changed)
    for b in range(4):  # rows not drawn are bit-equal
        assert torch.equal(out[b], wave[b]) or torch.allclose(out[b], wave[b] * 2, rtol=1e-2)


def test_same_seed_item_epoch_stream_give_the_same_views():
    wave, mask = _speechlike(LENGTHS)
    aug = Augmenter(AugmentConfig(tuple(FULL), seed=3))
    a, ma = aug(wave, mask, IDS, 2, stream=0)
    b, mb = Augmenter(AugmentConfig(tuple(FULL), seed=3))(wave.clone(), mask.clone(), IDS.clone(), 2, stream=0)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    for other in (aug(wave, mask, IDS, 2, stream=1), aug(wave, mask, IDS, 3, stream=0),
                  Augmenter(AugmentConfig(tuple(FULL), seed=4))(wave, mask, IDS, 2)):
        assert other[0].shape != a.shape or not torch.allclose(other[0], a)
    per_item = aug(wave, mask, IDS, torch.tensor([2, 2, 2, 2]))
    assert torch.equal(per_item[0], a)


def test_batched_equals_one_by_one():
    wave, mask = _speechlike(LENGTHS)
    chain = [t for t in FULL if t["name"] != "babble"]
    aug = Augmenter(AugmentConfig(tuple(chain), seed=9))
    epochs = torch.tensor([0, 1, 0, 5])
    out, out_mask = aug(wave, mask, IDS, epochs)
    lengths = (~out_mask).sum(1)
    assert lengths.tolist() != LENGTHS  # speed drew something other than 1
    for b, n in enumerate(LENGTHS):
        alone, alone_mask = aug(wave[b:b + 1, :n], None, IDS[b:b + 1], int(epochs[b]))
        assert alone_mask is None and alone.shape[1] == int(lengths[b])
        assert torch.equal(out[b, :int(lengths[b])], alone[0])
    reordered, _ = aug(wave.flip(0), mask.flip(0), IDS.flip(0), epochs.flip(0))
    assert torch.equal(reordered.flip(0), out)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_padding_stays_zero_and_lengths_follow(name):
    wave, mask = _speechlike(LENGTHS)
    out, out_mask = _one(name)(wave, mask, IDS, 0)
    assert out.dtype == wave.dtype and bool(torch.isfinite(out).all())
    assert bool((out[out_mask] == 0).all())
    if name != "speed":
        assert torch.equal(out_mask, mask)
    assert not torch.equal(out, wave) or name == "speed"


def test_garbage_in_the_padding_does_not_leak_into_valid_samples():
    wave, mask = _speechlike(LENGTHS)
    dirty = wave.masked_fill(mask, 5.0)
    aug = Augmenter([{"name": "speed", "factor": 0.9}, {"name": "gain", "db": 2}])
    clean_out, clean_mask = aug(wave, mask, IDS, 0)
    dirty_out, dirty_mask = aug(dirty, mask, IDS, 0)
    assert torch.equal(dirty_out, clean_out) and torch.equal(dirty_mask, clean_mask)


def test_time_maps_match_the_applied_chain():
    wave, mask = _speechlike(LENGTHS)
    aug = Augmenter([{"name": "time_shift", "shift_ms": 5}, {"name": "speed", "factor": [0.9, 1.0, 1.1]}])
    out, out_mask = aug(wave, mask, IDS, 1)
    scale, offset = aug.time_maps(IDS, 1)
    lengths = (~out_mask).sum(1)
    for b, n in enumerate(LENGTHS):
        assert int(lengths[b]) == math.ceil(n * float(scale[b]) - 1e-9)
        assert float(offset[b]) == pytest.approx(80 * float(scale[b]))


def test_runs_in_bfloat16_and_keeps_the_dtype():
    wave, mask = _speechlike(LENGTHS)
    out, _ = Augmenter(FULL)(wave.bfloat16(), mask, IDS, 0)
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out.float()).all())


@pytest.mark.parametrize(("cfg", "words"), [
    ([{"name": "echo"}], ["unknown name 'echo'", "gain", "noise"]),
    ([{"name": "noise", "snr": 5}], ["noise", "unknown key 'snr'", "snr_db", "color"]),
    ([{"name": "noise", "color": "red"}], ["noise", "'color'", "white"]),
    ([{"name": "gain", "p": 1.5}], ["gain", "p must be a probability"]),
    ([{"name": "gain", "db": [6, -6]}], ["gain", "'db'", "lo <= hi"]),
    ([{"name": "gain", "db": [1, 2, "x"]}], ["gain", "numbers"]),
    ([{"name": "speed", "factor": 3.0}], ["speed", "'factor'", "[0.5, 2.0]"]),
    ([{"name": "mu_law", "bits": 7.5}], ["mu_law", "integers"]),
    ([{"db": 3}], ["'name'"]),
    ({"transforms": [], "sed": 1}, ["unknown keys ['sed']"]),
])
def test_bad_configs_name_the_transform_and_key(cfg, words):
    with pytest.raises(ValueError) as err:
        Augmenter(cfg)
    for word in words:
        assert word in str(err.value)
    with pytest.raises(ValueError, match="unknown key"):
        time_map("speed", factr=1.1)
    with pytest.raises(ValueError, match="fixed value"):
        time_map("speed", factor=[0.9, 1.1])


@pytest.mark.parametrize("option", ["none", "views", "finetune"])
def test_hydra_augment_group(option):
    from speechcl.utils.config import compose, to_dataclass, to_plain

    plain = to_plain(compose("finetune_cpu", ["data.manifest_dir=x", f"augment={option}"]))
    aug = Augmenter(to_dataclass(AugmentConfig, plain["augment"], "augment"))
    assert aug.identity == (option == "none")
    wave, mask = _speechlike(LENGTHS)
    out, out_mask = aug(wave, mask, IDS, 0)
    assert bool((out[out_mask] == 0).all())
    assert compose("finetune_cpu", ["data.manifest_dir=x"]).augment.transforms == []


# --- CTC fine-tuning hook ------------------------------------------------------------------------------------

def test_ctc_task_augments_training_batches_only():
    from speechcl.data.labels import Dictionary
    from speechcl.training.finetune import CTCTask, FinetuneModelConfig, build_ctc_model

    dictionary = Dictionary(list("|ABCDE"))
    torch.manual_seed(0)
    model = build_ctc_model(FinetuneModelConfig(preset="tiny", freeze_finetune_updates=0, mask_prob=0.0,
                                                mask_channel_prob=0.0, layerdrop=0.0, activation_dropout=0.0),
                            len(dictionary))
    wave, mask = _speechlike([6400, 4800])
    batch = {"id": torch.tensor([3, 4]), "epoch": torch.tensor([0, 0]), "source": wave, "padding_mask": mask,
             "target": torch.tensor([[1, 2, 3], [4, 5, -1]]), "target_lengths": torch.tensor([3, 2])}

    def loss(task: CTCTask) -> float:
        torch.manual_seed(0)
        return float(task.forward(model, batch, torch.Generator().manual_seed(0)).loss.detach())

    plain = CTCTask(dictionary, 0)
    none = CTCTask(dictionary, 0, augment=Augmenter(AugmentConfig()))
    chain = CTCTask(dictionary, 0, augment=Augmenter([{"name": "speed", "factor": 1.1}, {"name": "noise",
                                                                                          "snr_db": 5}]))
    model.train()
    reference = loss(plain)
    assert loss(none) == reference and none.augment is None
    augmented = loss(chain)
    assert augmented != pytest.approx(reference, rel=1e-4) and loss(chain) == augmented  # seeded by id, epoch
    model.eval()
    assert loss(chain) == loss(plain)  # validation is never augmented
