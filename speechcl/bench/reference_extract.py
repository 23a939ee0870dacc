"""The reference of the extraction benchmark: a plain transformers loop, run as its own process.

Usage::

    python -m speechcl.bench.reference_extract --model HF_DIR --input DIR --output DIR [--threads N] [--device cpu]

What a user without speechcl would write: load ``Wav2Vec2Model.from_pretrained``, then for every ``.wav``
file under ``DIR`` (sorted) read it with soundfile (16 kHz mono expected, as the benchmark writes), run
the model on ``[1, samples]`` under ``torch.inference_mode`` and ``np.save`` the final output
``last_hidden_state[0]`` (``[frames, dim]`` float32) as ``OUT/<relative path>.npy``. The same output as
``speechcl extract --layers last`` (the layer both sides write); no resampling, normalisation, batching,
resumption or atomic writes. Prints one JSON line ``{"files": N, "audio_seconds": S}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speechcl.bench.reference_extract", description=__doc__)
    parser.add_argument("--model", required=True, help="transformers Wav2Vec2 model directory")
    parser.add_argument("--input", required=True, help="directory of 16 kHz mono .wav files")
    parser.add_argument("--output", required=True, help="output directory for .npy features")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import Wav2Vec2Model

    device = torch.device(args.device)
    model = Wav2Vec2Model.from_pretrained(args.model).to(device).eval()
    source, target = Path(args.input), Path(args.output)
    files = sorted(source.rglob("*.wav"))
    audio_seconds = 0.0
    with torch.inference_mode():
        for path in files:
            data, rate = sf.read(path, dtype="float32")
            if rate != 16_000 or data.ndim != 1:
                print(f"{path}: expected 16 kHz mono, got {rate} Hz with shape {data.shape}", file=sys.stderr)
                return 1
            feats = model(torch.from_numpy(data)[None].to(device)).last_hidden_state[0]
            out = target / path.relative_to(source).with_suffix(".npy")
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, feats.float().cpu().numpy())
            audio_seconds += len(data) / rate
    print(json.dumps({"files": len(files), "audio_seconds": audio_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
