"""Feature extraction: hidden states of wav2vec 2.0 models for audio files, in memory or to disk.

- :class:`FeatureExtractor`: waveforms → ``[frames, dim]`` / ``[layers, frames, dim]`` tensors (batching,
  chunking of long audio, layer selection).
- :func:`extract_to_directory`: a whole corpus → ``.npy`` files, shards or HDF5 (what ``speechcl extract`` runs).
- :func:`iter_shard_features`: read back ``--format shards`` output.
"""

from speechcl.features.extract import ExtractionSummary, extract_to_directory
from speechcl.features.extractor import FeatureExtractor, parse_layers
from speechcl.features.writers import iter_shard_features

__all__ = ["ExtractionSummary", "FeatureExtractor", "extract_to_directory", "iter_shard_features", "parse_layers"]
