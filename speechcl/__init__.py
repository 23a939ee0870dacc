"""speechcl: contrastive self-supervised speech learning."""

from speechcl.api import load_model
from speechcl.models.checkpoint import load_checkpoint, save_checkpoint
from speechcl.models.config import Wav2Vec2Config, preset
from speechcl.models.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining

__version__ = "0.1.0"

__all__ = [
    "Wav2Vec2Config",
    "Wav2Vec2Encoder",
    "Wav2Vec2ForCTC",
    "Wav2Vec2ForPretraining",
    "load_checkpoint",
    "load_model",
    "preset",
    "save_checkpoint",
]
