"""Write tiny real fairseq wav2vec 2.0 checkpoints and fairseq's own outputs for them.

The files land in ``tests/fixtures/fairseq/`` and are read by ``tests/interop/test_fairseq_real.py``,
which needs neither fairseq nor this script. This script runs only in a throwaway environment with
fairseq installed; fairseq is never a dependency of speechcl. To recreate that environment and rerun:

    python3.11 -m venv /tmp/fairseq-venv
    /tmp/fairseq-venv/bin/pip install torch==2.14.1
    /tmp/fairseq-venv/bin/pip install "numpy<2" fairseq-fixed==0.12.3.1   # builds a wheel: ~15 min on 2 cores
    /tmp/fairseq-venv/bin/python tools/make_fairseq_fixture.py [--output tests/fixtures/fairseq]

What it writes (all float32):

- ``pretrain_default.pt``: ``Wav2Vec2Model``, group-norm ("default") extractor without conv bias,
  post-LN, a conv width (16) different from the model width (24), so ``post_extract_proj`` exists.
- ``pretrain_layer_norm.pt``: layer-norm extractor with conv bias, pre-LN (``layer_norm_first``), conv
  width equal to the model width (fairseq then has no ``post_extract_proj``), ``latent_dim`` set,
  task ``normalize=True``.
- ``ctc.pt``: ``Wav2VecCtc`` fine-tuned from ``pretrain_default.pt`` through ``w2v_path``, as
  ``fairseq-hydra-train`` does, with the letter dictionary ``dict.ltr.txt`` (12 outputs).
- ``input.npz``: two waveforms at 16 kHz as 16-bit PCM (``pcm [2, 8000]`` int16, ``lengths [8000, 7000]``;
  the second is zero-padded and has an odd frame count, 21); the models see ``pcm / 32768`` in float32.
- ``<name>.npz`` per checkpoint: fairseq's outputs in eval mode for each waveform on its own (``u0_*``,
  ``u1_*``, cut to its length): ``features`` (after the feature LayerNorm, ``[T, C]``),
  ``hidden_{i}`` for ``i`` = 0..L (``hidden_0``: input of the first transformer layer, captured with a
  forward pre-hook; ``hidden_{i}``: output of layer ``i``, fairseq's ``layer_results[i-1][0]``), ``x``
  (fairseq's ``extract_features(...)["x"]``: after the final LayerNorm in pre-LN models); for the
  pretraining models ``targets`` (``project_q`` of the argmax codevectors of every frame), ``code_idx``
  and ``final_proj`` (``final_proj(x)``); for CTC ``logits`` (``[T, vocab]``).

Models are built with fairseq's own classes and saved with fairseq's own ``Trainer.save_checkpoint``
(optimizer state left out, ``checkpoint.no_save_optimizer_state=True``, to keep the files small). Each
file is then reloaded with ``checkpoint_utils.load_model_ensemble_and_task`` and the stored outputs are
those of the reloaded model. After fairseq's initialisation every parameter is perturbed with seeded
noise: fairseq starts LayerNorms at (1, 0), biases at 0 and attention projections so small that
attention is nearly uniform, and a swapped norm or projection would otherwise go unnoticed by the test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from fairseq import checkpoint_utils, tasks
from fairseq.criterions.ctc import CtcCriterionConfig
from fairseq.criterions.wav2vec_criterion import Wav2VecCriterionConfig
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models.wav2vec import Wav2Vec2Config, Wav2Vec2CtcConfig, Wav2Vec2Model, Wav2VecCtc
from fairseq.optim.adam import FairseqAdamConfig
from fairseq.optim.lr_scheduler.polynomial_decay_schedule import PolynomialDecayLRScheduleConfig
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig
from fairseq.trainer import Trainer
from omegaconf import OmegaConf

SAMPLE_RATE = 16000
LENGTHS = (8000, 7000)
LETTERS = ("|", "E", "T", "A", "O", "N", "I", "H")  # + fairseq's 4 specials = 12 CTC outputs

CONV = "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] * 2"
COMMON_MODEL = dict(
    conv_feature_layers=CONV, encoder_layers=2, encoder_ffn_embed_dim=48, encoder_attention_heads=2,
    quantize_targets=True, conv_pos=16, conv_pos_groups=4, latent_vars=8, latent_groups=2, final_dim=16,
    num_negatives=5,
    dropout=0.1, attention_dropout=0.1, dropout_input=0.1, dropout_features=0.1, encoder_layerdrop=0.05,
)
PRETRAINING = {
    "pretrain_default": dict(extractor_mode="default", conv_bias=False, layer_norm_first=False,
                             encoder_embed_dim=24, feature_grad_mult=0.1),
    "pretrain_layer_norm": dict(extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True,
                                encoder_embed_dim=16, latent_dim=8, feature_grad_mult=1.0),
}
NORMALIZE = {"pretrain_default": False, "pretrain_layer_norm": True}


def named(node, name: str):
    """A fairseq dataclass as an OmegaConf node with ``_name`` set (fairseq's hydra entry point sets it)."""
    cfg = OmegaConf.structured(node)
    cfg._name = name
    return cfg


def base_config(task, model, criterion) -> OmegaConf:
    cfg = OmegaConf.structured(FairseqConfig())
    cfg.common.cpu = True
    cfg.common.seed = 1
    cfg.checkpoint.no_save_optimizer_state = True
    cfg.optimization.lr = [5e-4]
    cfg.optimization.max_update = 10
    cfg.task, cfg.model, cfg.criterion = task, model, criterion
    cfg.optimizer = named(FairseqAdamConfig(adam_betas="(0.9,0.98)", adam_eps=1e-6, weight_decay=0.01,
                                            lr=[5e-4]), "adam")
    cfg.lr_scheduler = named(PolynomialDecayLRScheduleConfig(warmup_updates=2, lr=[5e-4], total_num_update=10),
                             "polynomial_decay")
    return cfg


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every parameter: no LayerNorm stays (1, 0), no bias stays 0, and the linear
    layers get weights large enough (std ≈ 0.2 instead of fairseq's 0.02) that attention is far from
    uniform, so that swapping the query and key projections changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            scale = 0.2 if p.dim() <= 2 else 0.1 * float(p.std())
            p.add_(scale * torch.randn(p.shape, generator=gen))


def save(cfg, task, model, criterion, path: Path) -> None:
    trainer = Trainer(cfg, task, model, criterion)
    trainer.save_checkpoint(str(path), {"train_iterator": {"epoch": 1}, "previous_training_time": 0.0})


def make_pretraining(name: str, data: Path, seed: int) -> None:
    torch.manual_seed(seed)
    cfg = base_config(
        named(AudioPretrainingConfig(data=str(data), normalize=NORMALIZE[name]), "audio_pretraining"),
        named(Wav2Vec2Config(**COMMON_MODEL, **PRETRAINING[name]), "wav2vec2"),
        named(Wav2VecCriterionConfig(infonce=True, loss_weights=[0.1, 10.0],
                                     log_keys=["prob_perplexity", "code_perplexity"]), "wav2vec"),
    )
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    assert isinstance(model, Wav2Vec2Model)
    perturb(model, seed)
    save(cfg, task, model, task.build_criterion(cfg.criterion), Path(f"{name}.pt"))


def make_ctc(data: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model_cfg = Wav2Vec2CtcConfig(
        w2v_path="pretrain_default.pt", apply_mask=True, mask_prob=0.5, mask_channel_prob=0.25,
        mask_channel_length=8, layerdrop=0.1, final_dropout=0.0, feature_grad_mult=0.0, normalize=False,
        freeze_finetune_updates=0, dropout=0.0, activation_dropout=0.1, attention_dropout=0.0)
    cfg = base_config(
        named(AudioFinetuningConfig(data=str(data), labels="ltr", normalize=False), "audio_finetuning"),
        named(model_cfg, "wav2vec_ctc"),
        named(CtcCriterionConfig(zero_infinity=True), "ctc"),
    )
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)  # reads pretrain_default.pt and fills in cfg.model.w2v_args
    assert isinstance(model, Wav2VecCtc)
    perturb(model, seed)  # stands in for fine-tuning: the encoder differs from the pretrained one
    save(cfg, task, model, task.build_criterion(cfg.criterion), Path("ctc.pt"))


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """Two seeded speech-like waveforms (harmonics with a moving pitch, plus noise) as zero-padded int16."""
    rng = np.random.default_rng(15)
    pcm = np.zeros((len(LENGTHS), max(LENGTHS)), dtype=np.int16)
    for row, n in enumerate(LENGTHS):
        t = np.arange(n) / SAMPLE_RATE
        f0 = 110 + 40 * row + 30 * np.sin(2 * np.pi * 3 * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        sig = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
        sig = 0.3 * sig * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(n)
        pcm[row, :n] = np.round(np.clip(sig, -1, 1) * 32767).astype(np.int16)
    return pcm, np.asarray(LENGTHS, dtype=np.int64)


def encoder_of(model):
    return model.w2v_encoder.w2v_model if isinstance(model, Wav2VecCtc) else model


@torch.no_grad()
def outputs(model, wav: torch.Tensor) -> dict[str, np.ndarray]:
    """fairseq's outputs for one waveform ``wav [1, S]`` (see the module docstring)."""
    w2v = encoder_of(model)
    captured = []
    hook = w2v.encoder.layers[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    res = w2v.extract_features(wav, None, mask=False)
    hook.remove()
    t = res["x"].shape[1]
    out = {"features": res["features"][0], "x": res["x"][0], "hidden_0": captured[0][:t, 0]}
    for i, (layer_x, _, _) in enumerate(res["layer_results"], start=1):
        out[f"hidden_{i}"] = layer_x[:t, 0]
        # fairseq's own per-layer entry point gives the same tensor
        by_layer = w2v.extract_features(wav, None, mask=False, layer=i - 1)["x"][0]
        assert torch.equal(by_layer, out[f"hidden_{i}"]), i
    if isinstance(model, Wav2VecCtc):
        net = model(source=wav, padding_mask=None)
        out["logits"] = model.get_logits(net).transpose(0, 1)[0]
    else:
        q = w2v.quantizer(res["features"], produce_targets=True)
        out["targets"] = w2v.project_q(q["x"])[0]
        out["code_idx"] = q["targets"][0]
        out["final_proj"] = w2v.final_proj(res["x"])[0]
    return {k: v.numpy() for k, v in out.items()}


def reload_and_run(name: str, data: Path, wav: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([f"{name}.pt"],
                                                                        arg_overrides={"data": str(data)})
    model = models[0].eval()
    result = {}
    for row, n in enumerate(lengths):
        for key, value in outputs(model, torch.from_numpy(wav[row:row + 1, :n])).items():
            result[f"u{row}_{key}"] = value
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--output", type=Path, default=root / "tests" / "fixtures" / "fairseq")
    args = parser.parse_args()
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # fairseq's loader calls torch.load with torch's default weights_only=True, which refuses the
    # Dictionary that a fine-tuning checkpoint keeps in task_state; these are files this script writes.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    pcm, lengths = inputs()
    wav = pcm.astype(np.float32) / 32768
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # relative paths in the saved configs: "data", "pretrain_default.pt"
        data = Path("data")
        data.mkdir()
        (data / "dict.ltr.txt").write_text("".join(f"{c} {1000 - 10 * i}\n" for i, c in enumerate(LETTERS)))
        make_pretraining("pretrain_default", data, seed=1)
        make_pretraining("pretrain_layer_norm", data, seed=2)
        make_ctc(data, seed=3)
        np.savez(out / "input.npz", pcm=pcm, lengths=lengths)
        shutil.copy(data / "dict.ltr.txt", out / "dict.ltr.txt")
        for name in ("pretrain_default", "pretrain_layer_norm", "ctc"):
            np.savez(out / f"{name}.npz", **reload_and_run(name, data, wav, lengths))
            shutil.copy(f"{name}.pt", out / f"{name}.pt")
    for path in sorted(out.iterdir()):
        print(f"{path.stat().st_size:8d}  {path}")


if __name__ == "__main__":
    main()
