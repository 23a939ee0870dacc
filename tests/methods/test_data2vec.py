"""objective=data2vec: targets from hand instance-normalised layers with padding, the L2 / smooth-L1 loss and
fairseq's variance figure by hand, the teacher's FFN outputs, the transformer-only teacher's input, the EMA update
and its schedule, K against the depth, masking, and the paper's guards (the CLI / resume / load side is
tests/methods/test_contract.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

import speechcl
from speechcl.methods import METHODS, build_method
from speechcl.methods.data2vec import Data2Vec, Data2VecConfig, resolve_top_k
from speechcl.objectives.data2vec import channel_std, data2vec_targets, instance_norm, regression_loss
from speechcl.training.pretrain import MethodTask
from speechcl.training.trainer import CollapseError
from tests.methods.helpers import random_batch, seeded

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(__file__).resolve().parents[2] / "conf" / "objective" / "data2vec.yaml"


def test_registered_with_the_yaml_defaults() -> None:
    assert METHODS["data2vec"] is Data2Vec
    yaml = OmegaConf.to_container(OmegaConf.load(CONF))
    assert yaml == {"name": "data2vec", **dataclasses.asdict(Data2Vec.Config())}


def _model(**settings: object) -> Data2Vec:
    torch.manual_seed(0)
    return build_method(speechcl.preset("tiny"), {"name": "data2vec", **settings})


def _hand_instance_norm(x: torch.Tensor, valid: list[int], eps: float = 1e-5) -> list[list[list[float]]]:
    b, t, d = x.shape
    out = [[[0.0] * d for _ in range(t)] for _ in range(b)]
    for i in range(b):
        for c in range(d):
            values = [float(x[i, s, c]) for s in range(valid[i])]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / len(values)  # biased, as F.instance_norm
            for s in range(valid[i]):
                out[i][s][c] = (values[s] - mean) / math.sqrt(var + eps)
    return out


def test_targets_are_the_mean_of_hand_instance_normalised_layers_with_padding() -> None:
    g = seeded(0)
    layers = [torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * (k + 1) + k for k in range(3)]
    valid = [5, 3]
    pad = torch.arange(5)[None, :] >= torch.tensor(valid)[:, None]
    for layer in layers:
        layer[1, 3:] = 100.0  # padded frames: must not touch the statistics
    hand = [_hand_instance_norm(layer, valid) for layer in layers]
    expected = torch.tensor([[[sum(h[i][s][c] for h in hand) / 3 for c in range(3)] for s in range(5)]
                             for i in range(2)], dtype=torch.float64)
    got = data2vec_targets(layers, pad)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert float(got[1, 3:].abs().max()) == 0.0  # padded frames come out as 0
    alone = instance_norm(layers[0][1:2, :3])  # a padded utterance is normalised as if it stood alone
    torch.testing.assert_close(instance_norm(layers[0], pad)[1:2, :3], alone)
    torch.testing.assert_close(instance_norm(layers[0][:1]), F.instance_norm(layers[0][:1].transpose(1, 2).float())
                               .transpose(1, 2))  # no padding: fairseq's F.instance_norm
    torch.testing.assert_close(data2vec_targets(layers, pad, normalize=False), torch.stack(layers).mean(0).float())


def test_regression_loss_by_hand() -> None:
    g = seeded(1)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64)
    y = torch.randn(4, 9, generator=g, dtype=torch.float64) * 2
    l2 = sum(float((x[n, d] - y[n, d]) ** 2) for n in range(4) for d in range(9)) / 3.0  # 1/sqrt(9)
    assert float(regression_loss(x, y)) == pytest.approx(l2, rel=1e-6)
    beta = 0.5

    def smooth(e: float) -> float:
        return 0.5 * e * e / beta if abs(e) < beta else abs(e) - 0.5 * beta

    sl1 = sum(smooth(float(x[n, d] - y[n, d])) for n in range(4) for d in range(9))
    assert float(regression_loss(x, y, beta=beta, scale=1.0)) == pytest.approx(sl1, rel=1e-6)
    target = y.clone().requires_grad_(True)
    regression_loss(x.clone().requires_grad_(True), target).backward()
    assert target.grad is None
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        regression_loss(x, y[:, :3])


def test_channel_std_is_fairseqs_compute_var() -> None:
    y = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 3.0]])
    # column 0: unbiased var 4; column 1: unbiased var 3
    assert channel_std(y) == pytest.approx((math.sqrt(4 + 1e-6) + math.sqrt(3 + 1e-6)) / 2, rel=1e-6)
    assert math.isnan(channel_std(y[:1]))


def test_top_k_against_the_depth() -> None:
    assert [resolve_top_k(None, n) for n in (2, 6, 12, 24)] == [1, 4, 8, 8]
    assert _model().top_k == 1 and _model(top_k=2).top_k == 2
    with pytest.raises(ValueError, match=r"objective.top_k=3 .*model.encoder_layers=2"):
        _model(top_k=3)
    with pytest.raises(ValueError, match="objective.top_k"):
        Data2VecConfig(top_k=0)


def test_the_teacher_layers_are_the_ffn_outputs_before_the_residual() -> None:
    model = _model(top_k=2, ema_transformer_only=False).eval()
    wave = random_batch([0, 1], seed=3, samples=8000)["source"]
    ffn = model.teacher_layers(wave, None, None, None)
    hidden = model.teacher(wave, None, return_hidden=True).hidden_states
    for i, layer in enumerate(model.teacher.encoder.layers):  # pre-LN: h' = h + attn(LN h); out = h' + ffn(LN h')
        h = hidden[i]
        mid = h + layer.self_attn(layer.self_attn_layer_norm(h), None)
        torch.testing.assert_close(ffn[i], hidden[i + 1] - mid, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ffn[i], layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(mid)))))
    top = _model(top_k=1, ema_transformer_only=False).eval().teacher_layers(wave, None, None, None)
    torch.testing.assert_close(top[0], ffn[1])  # K = 1: the last block's
    blocks = _model(top_k=1, target="block", ema_transformer_only=False).eval().teacher_layers(wave, None, None, None)
    torch.testing.assert_close(blocks[0], hidden[2])  # the last block's output (before the final LayerNorm)
    assert not any(layer.fc2._forward_hooks for layer in model.teacher.encoder.layers)  # hooks removed


def test_loss_is_the_objective_of_the_teachers_unmasked_view() -> None:
    model = _model(top_k=2).eval()  # transformer-only teacher: the student's projected features feed it
    assert isinstance(model.teacher, type(model.encoder.encoder))
    batch = random_batch([0, 1], seed=4, samples=12000)
    batch["padding_mask"][1, 9000:] = True
    batch["source"][1, 9000:] = 0.0
    out = model(batch, seeded(2))
    wave, pad = batch["source"], batch["padding_mask"]
    mask = model.draw_mask(wave, pad, seeded(2))
    enc = model.encoder(wave, pad, mask_indices=mask)
    feats = model.encoder.feature_extractor(wave, (~pad).sum(1).tolist())
    projected = model.encoder.post_extract_proj(model.encoder.layer_norm(feats))  # no dropout, no mask
    _, hidden = model.teacher(projected, enc.padding_mask, return_hidden=True)
    keys = (~enc.padding_mask)[:, None, None, :]
    layers = [hidden[i + 1] - (hidden[i] + layer.self_attn(layer.self_attn_layer_norm(hidden[i]), keys))
              for i, layer in enumerate(model.teacher.layers)]  # FFN outputs (pre-LN) of both blocks
    y = data2vec_targets(layers, enc.padding_mask)[mask]
    expected = regression_loss(model.final_proj(enc.x[mask]), y)
    torch.testing.assert_close(out.loss, expected)
    assert out.sample_size == int(mask.sum()) > 0
    assert not bool((mask & enc.padding_mask).any())  # padded frames are never masked
    summary = model.summarize(out.stats)
    assert summary["target_var"] == pytest.approx(channel_std(y), rel=1e-6)
    assert summary["zero_loss"] == pytest.approx(float(y.detach().pow(2).sum()) / 8.0 / out.sample_size, rel=1e-5)  # √64
    assert summary["masked"] == pytest.approx(int(mask.sum()) / float(enc.lengths.sum()))


def test_teacher_carries_no_gradient() -> None:
    model = _model().train()
    assert not model.teacher.training
    model(random_batch([0, 1, 2], seed=1, samples=12000), seeded(5)).loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.final_proj.weight.grad is not None and model.encoder.mask_emb.grad is not None
    assert all(p.grad is not None for p in model.encoder.feature_extractor.parameters())  # shared, trained


def test_ema_update_and_schedule() -> None:
    model = _model(ema_decay=0.9, ema_schedule="constant")
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.teacher.parameters()]
    model.after_update(1)
    for t0, s, t1 in zip(before, model.encoder.encoder.parameters(), model.teacher.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert not any(name.startswith("teacher.feature_extractor") for name, _ in model.named_parameters())
    paper = _model()  # 0.999 -> 0.9999 linearly over 30k updates, then constant
    assert paper.decay_at(0) == pytest.approx(0.999)
    assert paper.decay_at(15000) == pytest.approx(0.99945)
    assert paper.decay_at(30000) == paper.decay_at(90000) == pytest.approx(0.9999)
    paper.set_num_updates(15000)
    assert paper.summarize({})["ema_decay"] == pytest.approx(0.99945)
    whole = _model(ema_transformer_only=False)
    assert {n for n, _ in whole.teacher.named_parameters()} == {n for n, _ in whole.encoder.named_parameters()}


def test_no_masked_frame_is_a_clear_error() -> None:
    model = _model(mask_min_masks=0, mask_prob=0.01)
    with pytest.raises(ValueError, match="no frame was masked"):
        model(random_batch([0], seed=1, samples=4000), seeded(0))


def test_guards_stop_the_run_as_the_paper() -> None:
    task = MethodTask(_model())
    healthy = {"loss": 1.0, "target_var": 0.5, "pred_var": 0.3, "ema_decay": 0.999, "masked": 0.5}
    assert task.check(healthy | {"target_var": 0.05}, 5000) == []  # fairseq: num_updates > 5000
    with pytest.raises(CollapseError, match="targets collapsed: target_var 0.05 < objective.min_target_var=0.1"):
        task.check(healthy | {"target_var": 0.05}, 5001)
    with pytest.raises(CollapseError, match="predictions collapsed: pred_var 0.005 < objective.min_pred_var=0.01"):
        task.check(healthy | {"pred_var": 0.005}, 5001)
    assert task.check(healthy | {"target_var": 0.11, "pred_var": 0.011}, 9000) == []
    early = MethodTask(_model(guard_after=10))
    with pytest.raises(CollapseError, match="target_var"):
        early.check(healthy | {"target_var": 0.01}, 11)
