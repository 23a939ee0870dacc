"""speechcl vs transformers (the reference port) on randomly initialised models saved with save_pretrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import speechcl
from speechcl.objectives import wav2vec2_loss

transformers = pytest.importorskip("transformers")
from transformers import Wav2Vec2Config as HFConfig  # noqa: E402
from transformers import Wav2Vec2ForCTC as HFForCTC  # noqa: E402
from transformers import Wav2Vec2ForPreTraining as HFForPreTraining  # noqa: E402
from transformers import Wav2Vec2Model as HFModel  # noqa: E402
from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices  # noqa: E402

TOL = 1e-4


def hf_config(stable: bool, **kw) -> HFConfig:
    values = dict(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group", conv_bias=stable,
        codevector_dim=32, proj_codevector_dim=24, num_codevectors_per_group=16, num_negatives=7,
        mask_time_prob=0.5, mask_feature_prob=0.0,
    )
    values.update(kw)
    return HFConfig(**values)


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    attention = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.randn(n, generator=g)
        attention[i, :n] = 1
    return wav, attention


def max_diff_valid(a: torch.Tensor, b: torch.Tensor, lengths: torch.Tensor) -> float:
    return max(float((a[i, :n] - b[i, :n]).abs().max()) for i, n in enumerate(lengths.tolist()))


@pytest.mark.parametrize("stable", [False, True], ids=["postln-groupnorm", "preln-layernorm"])
def test_hidden_states_match(tmp_path, stable):
    torch.manual_seed(0)
    hf = HFForPreTraining(hf_config(stable)).eval()
    hf.save_pretrained(tmp_path)
    ours = speechcl.load_model(tmp_path)
    assert isinstance(ours, speechcl.Wav2Vec2ForPretraining)
    wav, attention = padded_batch([16000, 11000, 7300])
    with torch.no_grad():
        ref = hf.wav2vec2(wav, attention_mask=attention, output_hidden_states=True)
    got = ours.extract_features(wav, padding_mask=attention == 0)
    assert got.lengths.tolist() == hf.wav2vec2._get_feat_extract_output_lengths(attention.sum(1)).tolist()
    assert len(got.hidden_states) == len(ref.hidden_states) == 4
    expected = [*ref.hidden_states, ref.last_hidden_state]
    if not stable:
        # transformers' group norm takes its statistics over the padding too, so its padded rows differ from
        # the rows alone; ours skips the padding: each padded row equals transformers run on the row alone.
        assert max_diff_valid(ref.last_hidden_state, got.last_hidden_state, got.lengths) > 1e-2
        frames = int(got.lengths.max())
        with torch.no_grad():
            alone = [hf.wav2vec2(wav[i:i + 1, :n], output_hidden_states=True)
                     for i, n in enumerate(attention.sum(1).tolist())]
        rows = [[*r.hidden_states, r.last_hidden_state] for r in alone]
        expected = [torch.cat([torch.nn.functional.pad(row[k], (0, 0, 0, frames - row[k].shape[1])) for row in rows])
                    for k in range(len(expected))]
    for a, b in zip(expected, [*got.hidden_states, got.last_hidden_state], strict=True):
        assert max_diff_valid(a, b, got.lengths) <= TOL


def test_bare_model_legacy_weight_norm_and_bin(tmp_path):
    """A Wav2Vec2Model saved as pytorch_model.bin with the old weight_g/weight_v keys."""
    torch.manual_seed(1)
    hf = HFModel(hf_config(False)).eval()
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    renamed = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert any(k.endswith("weight_g") for k in renamed)
    (tmp_path / "model.safetensors").unlink()
    torch.save(renamed, tmp_path / "pytorch_model.bin")
    ours = speechcl.load_model(tmp_path)
    assert isinstance(ours, speechcl.Wav2Vec2Encoder)
    wav = torch.randn(2, 9000)
    with torch.no_grad():
        ref = hf(wav, output_hidden_states=True)
    got = ours.extract_features(wav)
    for a, b in zip(ref.hidden_states, got.hidden_states):
        assert float((a - b).abs().max()) <= TOL


def test_ctc_logits_match(tmp_path):
    torch.manual_seed(2)
    hf = HFForCTC(hf_config(True, vocab_size=29)).eval()
    hf.save_pretrained(tmp_path)
    ours = speechcl.load_model(tmp_path)
    assert isinstance(ours, speechcl.Wav2Vec2ForCTC) and ours.vocab_size == 29
    wav, attention = padded_batch([12000, 8000], seed=3)
    with torch.no_grad():
        ref = hf(wav, attention_mask=attention).logits
        logits, lengths = ours(wav, padding_mask=attention == 0)
    assert max_diff_valid(ref, logits, lengths) <= TOL


def _fixed_gumbel(noise: torch.Tensor):
    def gumbel_softmax(logits, tau=1.0, hard=False, **_):
        y_soft = ((logits + noise) / tau).softmax(-1)
        y_hard = torch.zeros_like(y_soft).scatter_(-1, y_soft.argmax(-1, keepdim=True), 1.0)
        return y_hard - y_soft.detach() + y_soft

    return gumbel_softmax


@pytest.mark.parametrize("stable", [False, True], ids=["postln-groupnorm", "preln-layernorm"])
def test_pretraining_logits_and_loss_match(tmp_path, monkeypatch, stable):
    """Same mask, distractor indices and Gumbel noise -> same codevectors, logits and loss (train mode)."""
    torch.manual_seed(4)
    cfg = hf_config(stable, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                    feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, layerdrop=0.0, diversity_loss_weight=0.1)
    hf = HFForPreTraining(cfg)
    hf.save_pretrained(tmp_path)
    ours = speechcl.load_model(tmp_path).train()
    hf.train()
    # training-mode temperature as both would anneal it
    hf.set_gumbel_temperature(1.7)
    ours.quantizer.temperature = 1.7

    wav = torch.randn(3, 12000)
    b, t = 3, int(ours.encoder.output_lengths(torch.tensor([12000]))[0])
    mask = speechcl.models.masking.compute_span_mask(
        (b, t), 0.5, 4, min_masks=2, generator=torch.Generator().manual_seed(5))
    np.random.seed(6)
    hf_neg = torch.from_numpy(_sample_negative_indices((b, t), cfg.num_negatives, mask.numpy())).long()
    rank = torch.full((b * t,), -1, dtype=torch.long)
    rank[mask.flatten()] = torch.arange(int(mask.sum()))
    our_neg = rank[hf_neg[mask]]
    assert bool((our_neg >= 0).all())
    noise = speechcl.models.quantizer.gumbel_noise((b * t * cfg.num_codevector_groups, cfg.num_codevectors_per_group),
                                                   torch.Generator().manual_seed(7))
    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", _fixed_gumbel(noise))
    ref = hf(wav, mask_time_indices=mask, sampled_negative_indices=hf_neg)
    noise_masked = noise.view(b, t, cfg.num_codevector_groups, -1)[mask].reshape(-1, cfg.num_codevectors_per_group)
    out = ours(wav, mask_indices=mask, negative_indices=our_neg, gumbel=noise_masked)

    # codevectors (through project_q) and projected context at masked steps
    with torch.no_grad():
        projected = ours.project_q(out.quantized.codevectors)
    assert float((ref.projected_quantized_states[mask].detach() - projected).abs().max()) <= TOL
    # logits by transformers' own formula from its outputs, in our (batch, time) order of masked steps
    q = ref.projected_quantized_states.detach()
    negs = q.reshape(b * t, -1)[hf_neg.view(-1)].view(b, t, cfg.num_negatives, -1).permute(2, 0, 1, 3)
    ref_logits = hf.compute_contrastive_logits(q[None], negs, ref.projected_states.detach(), 0.1)
    ref_logits[1:][(q == negs).all(-1)] = float("-inf")
    ref_logits = ref_logits.permute(1, 2, 0)[mask]  # [N, K + 1]
    assert out.logits.shape == ref_logits.shape
    got_logits = out.logits.detach()
    assert torch.equal(torch.isinf(ref_logits), torch.isinf(got_logits))
    finite = torch.isfinite(ref_logits)
    assert float((ref_logits[finite] - got_logits[finite]).abs().max()) <= 1e-3  # logits are cos / 0.1
    loss = wav2vec2_loss(out, diversity_weight=0.1, feature_pen_weight=0.0)
    assert abs(float(ref.codevector_perplexity.detach()) - loss.prob_perplexity) <= 1e-3
    assert abs(float(ref.contrastive_loss.detach()) - float(loss.contrastive.detach())) <= 1e-3 * max(1.0, float(ref.contrastive_loss.detach()))
    assert abs(float(ref.loss.detach()) - float(loss.loss.detach())) <= 1e-3 * max(1.0, float(ref.loss.detach()))


def test_quantizer_eval_argmax_matches(tmp_path):
    torch.manual_seed(8)
    hf = HFForPreTraining(hf_config(False)).eval()
    hf.save_pretrained(tmp_path)
    ours = speechcl.load_model(tmp_path)
    feats = torch.randn(5, 11, 32)
    with torch.no_grad():
        ref, _ = hf.quantizer(feats)
        got = ours.quantizer(feats.view(-1, 32))
    assert float((ref.view(-1, ref.shape[-1]) - got.codevectors).abs().max()) <= TOL
