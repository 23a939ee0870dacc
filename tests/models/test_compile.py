"""torch.compile of the encoder's transformer layers: same outputs as eager, bounded recompilation, copies
that run their own weights. The fast tests use the ``aot_eager`` backend (dynamo's graph capture and AOT
autograd, no code generation); one slow test runs Inductor's generated CPU code."""

from __future__ import annotations

import copy

import pytest
import torch

from speechcl.models.compile import compile_counters, compile_encoder, is_compiled, uncompile_encoder
from speechcl.models.config import preset
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForPretraining

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(**overrides) -> tuple[Wav2Vec2Encoder, Wav2Vec2Encoder]:
    torch.manual_seed(0)
    eager = Wav2Vec2Encoder(preset("tiny", encoder_layers=3, **overrides))
    compiled = copy.deepcopy(eager)
    assert compile_encoder(compiled, backend="aot_eager") == 3
    return eager, compiled


def _graphs() -> int:
    return compile_counters()["graphs"]


def test_compiled_equals_eager_in_eval_and_recompiles_only_per_mode():
    torch._dynamo.reset()
    eager, compiled = _pair()
    eager.eval(), compiled.eval()
    start = _graphs()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # one bucket: several lengths and batch sizes, then a padded batch (a mask: one more graph)
        for batch, samples in ((2, 16000), (3, 16720), (2, 17440), (4, 18100), (3, 19000)):
            wav = torch.randn(batch, samples, generator=g)
            torch.testing.assert_close(compiled(wav).x, eager(wav).x, rtol=1e-5, atol=1e-5)
        assert _graphs() - start == 1  # dynamic shapes: every length and layer reuse one graph
        padding = torch.zeros(3, 16000, dtype=torch.bool)
        padding[1, 9000:] = True
        wav = torch.randn(3, 16000, generator=g)
        out, ref = compiled(wav, padding), eager(wav, padding)
        torch.testing.assert_close(out.x, ref.x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled.extract_features(wav).hidden_states[2],
                                   eager.extract_features(wav).hidden_states[2], rtol=1e-5, atol=1e-5)
    assert _graphs() - start == 2
    assert compile_counters()["graph_breaks"] == 0


def test_compiled_training_gradients_equal_eager():
    """Training mode without dropout (compiled dropout draws differ from eager's by design): the same loss
    and gradients, over two lengths and with masking, from one training graph."""
    torch._dynamo.reset()
    eager, compiled = _pair(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                            dropout_features=0.0, layerdrop=0.0)
    eager.train(), compiled.train()
    start = _graphs()
    for samples in (16000, 17600):
        wav = torch.randn(2, samples, generator=torch.Generator().manual_seed(samples))
        losses = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            out = model(wav, mask=True, generator=torch.Generator().manual_seed(3))
            loss = out.x.square().mean()
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert _graphs() - start == 1


def test_copies_of_a_compiled_model_run_their_own_weights_and_keep_state_dict_keys():
    """An EMA teacher is a deepcopy of the student: compiled, it must compute with its own weights."""
    eager, compiled = _pair()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    teacher = copy.deepcopy(compiled).eval()
    eager_teacher = copy.deepcopy(eager).eval()
    with torch.no_grad():
        for t in (teacher, eager_teacher):
            for p in t.parameters():
                p.mul_(0.5)
        wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(teacher(wav).x, eager_teacher(wav).x, rtol=1e-5, atol=1e-5)
    assert is_compiled(teacher) and is_compiled(compiled) and not is_compiled(eager)
    uncompile_encoder(teacher)
    assert not is_compiled(teacher)


def test_compile_finds_the_encoder_of_any_speechcl_model():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(preset("tiny"))
    assert compile_encoder(model, backend="aot_eager") == preset("tiny").encoder_layers
    assert is_compiled(model)
    with pytest.raises(ValueError, match="no speechcl encoder"):
        compile_encoder(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_inductor_compiled_encoder_equals_eager():
    """Inductor's generated CPU code (tens of seconds to compile the first time, cached afterwards)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Wav2Vec2Encoder(preset("tiny")).eval()
    compiled = copy.deepcopy(eager)
    compile_encoder(compiled, backend="inductor")
    with torch.no_grad():
        for samples in (16000, 17000):
            wav = torch.randn(2, samples, generator=torch.Generator().manual_seed(samples))
            torch.testing.assert_close(compiled(wav).x, eager(wav).x, rtol=1e-4, atol=1e-4)
