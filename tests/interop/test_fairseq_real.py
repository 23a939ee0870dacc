"""fairseq import against checkpoints written by fairseq itself, and fairseq's own outputs for them.

The files in ``tests/fixtures/fairseq/`` come from ``tools/make_fairseq_fixture.py``, run once with
fairseq 0.12 installed (its docstring says how); these tests need no fairseq. Each ``<name>.npz`` holds
fairseq's eval-mode outputs for every input utterance on its own, keys ``u{row}_{what}``.

Hidden states, like with like: fairseq's ``layer_results[i][0]`` is the output of transformer layer
``i`` — in post-LN models after that layer's ``final_layer_norm``, in pre-LN models the raw residual
stream — which is what speechcl's ``hidden_states[i + 1]`` holds in both cases (transformers' order).
``hidden_0`` (fairseq: the input of layer 0, captured with a forward pre-hook) is the positional
convolution's output added to the projected features, after the encoder LayerNorm in post-LN models:
speechcl's ``hidden_states[0]``. fairseq's ``extract_features(...)["x"]`` applies the final LayerNorm
only in pre-LN models, as speechcl's ``last_hidden_state`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import speechcl
from speechcl.interop.fairseq import fairseq_labels, fairseq_normalize, read_fairseq_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fairseq"
TOLERANCE = 1e-4
PRETRAINING = ("pretrain_default", "pretrain_layer_norm")


def inputs() -> tuple[torch.Tensor, list[int]]:
    """``wav [2, S]`` float32 (the second row zero-padded) and the valid lengths."""
    with np.load(FIXTURES / "input.npz") as data:
        wav = torch.from_numpy(data["pcm"].astype(np.float32) / 32768)
        return wav, [int(n) for n in data["lengths"]]


def reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return dict(data)


def assert_close(ours: torch.Tensor, theirs: np.ndarray, what: str) -> None:
    assert tuple(ours.shape) == theirs.shape, f"{what}: shape {tuple(ours.shape)} != fairseq {theirs.shape}"
    diff = float((ours.float() - torch.from_numpy(theirs)).abs().max())
    assert diff <= TOLERANCE, f"{what}: max abs difference {diff:.3g} from fairseq"


def load(name: str):
    model = speechcl.load_model(FIXTURES / f"{name}.pt")
    assert not model.training
    return model


@pytest.mark.parametrize("name", [*PRETRAINING, "ctc"])
def test_hidden_states_match_fairseq(name):
    model = load(name)
    ref = reference(name)
    wav, lengths = inputs()
    layers = model.cfg.encoder_layers
    alone = [model.extract_features(wav[row:row + 1, :n]) for row, n in enumerate(lengths)]
    padded = model.extract_features(wav, torch.arange(wav.shape[1])[None, :] >= torch.tensor(lengths)[:, None])
    for row in range(len(lengths)):
        t = ref[f"u{row}_x"].shape[0]
        assert int(padded.lengths[row]) == t
        for how, out, b in (("alone", alone[row], 0), ("in a padded batch", padded, row)):
            assert len(out.hidden_states) == layers + 1
            for i in range(layers + 1):
                assert_close(out.hidden_states[i][b, :t], ref[f"u{row}_hidden_{i}"],
                             f"{name} utterance {row} {how}: hidden state {i}")
            assert_close(out.last_hidden_state[b, :t], ref[f"u{row}_x"], f"{name} utterance {row} {how}: output")


@pytest.mark.parametrize("name", PRETRAINING)
def test_pretraining_heads_match_fairseq(name):
    """Quantizer (argmax codes in eval mode), ``project_q`` and ``final_proj`` on every frame."""
    model = load(name)
    assert isinstance(model, speechcl.Wav2Vec2ForPretraining)
    ref = reference(name)
    wav, lengths = inputs()
    for row, n in enumerate(lengths):
        with torch.no_grad():
            enc = model.encoder(wav[row:row + 1, :n])
            q = model.quantizer(enc.features[0])
            assert_close(enc.features[0], ref[f"u{row}_features"], f"{name} utterance {row}: features")
            assert torch.equal(q.indices, torch.from_numpy(ref[f"u{row}_code_idx"])), f"{name} {row}: codes"
            assert_close(model.project_q(q.codevectors), ref[f"u{row}_targets"], f"{name} {row}: targets")
            assert_close(model.final_proj(enc.x[0]), ref[f"u{row}_final_proj"], f"{name} {row}: final_proj")


def test_ctc_logits_match_fairseq():
    model = load("ctc")
    assert isinstance(model, speechcl.Wav2Vec2ForCTC)
    ref = reference("ctc")
    wav, lengths = inputs()
    padding = torch.arange(wav.shape[1])[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        batch, frames = model(wav, padding)
        for row, n in enumerate(lengths):
            theirs = ref[f"u{row}_logits"]
            assert int(frames[row]) == theirs.shape[0]
            assert_close(model(wav[row:row + 1, :n])[0][0], theirs, f"ctc utterance {row}: logits")
            assert_close(batch[row, :theirs.shape[0]], theirs, f"ctc utterance {row} in a padded batch: logits")


def test_configs_and_task_state_are_read():
    default, layer_norm, ctc = (load(n) for n in ("pretrain_default", "pretrain_layer_norm", "ctc"))
    assert (default.cfg.extractor_mode, default.cfg.layer_norm_first, default.cfg.conv_bias) == \
        ("group_norm", False, False)
    assert (layer_norm.cfg.extractor_mode, layer_norm.cfg.layer_norm_first, layer_norm.cfg.conv_bias) == \
        ("layer_norm", True, True)
    assert default.cfg.conv_layers == ((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2
    assert default.cfg.layerdrop == 0.05 and default.cfg.feature_grad_mult == 0.1
    # fine-tuning values override the pretraining ones
    assert ctc.cfg.layerdrop == 0.1 and ctc.cfg.mask_channel_length == 8 and ctc.cfg.feature_grad_mult == 0.0
    checkpoints = {n: read_fairseq_checkpoint(FIXTURES / f"{n}.pt") for n in (*PRETRAINING, "ctc")}
    assert [fairseq_normalize(checkpoints[n]) for n in (*PRETRAINING, "ctc")] == [False, True, False]
    letters = [line.split()[0] for line in (FIXTURES / "dict.ltr.txt").read_text().splitlines()]
    assert fairseq_labels(checkpoints["ctc"]) == ["<s>", "<pad>", "</s>", "<unk>", *letters]
    assert ctc.vocab_size == 4 + len(letters)
    assert fairseq_labels(checkpoints["pretrain_default"]) is None


def test_metadata_of_a_fairseq_ctc_checkpoint_carries_its_dictionary() -> None:
    from speechcl.interop.export import read_fairseq_dictionary
    from speechcl.interop.loading import load_model_with_metadata, read_metadata

    expected = read_fairseq_dictionary(FIXTURES / "dict.ltr.txt")
    assert read_metadata(FIXTURES / "ctc.pt").labels == expected
    assert load_model_with_metadata(FIXTURES / "ctc.pt")[1].labels == expected
    assert read_metadata(FIXTURES / "pretrain_default.pt").labels is None
