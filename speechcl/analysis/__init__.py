"""Judging representations: frozen-model probes per layer, and an s3prl-compatible upstream.

- :func:`~speechcl.analysis.probe.run_probe` / ``speechcl probe``: phone, CTC, speaker and keyword probes
  on each hidden state and on the SUPERB weighted sum of layers (:mod:`speechcl.analysis.probe`).
- :class:`~speechcl.analysis.s3prl.SpeechclUpstream`: a speechcl model as an s3prl upstream.
"""

from speechcl.analysis.heads import LayerMix, ProbeHead
from speechcl.analysis.probe import ProbeConfig, ProbeResult, run_probe
from speechcl.analysis.s3prl import SpeechclUpstream

__all__ = ["LayerMix", "ProbeConfig", "ProbeHead", "ProbeResult", "SpeechclUpstream", "run_probe"]
