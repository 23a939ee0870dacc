"""Corpora, manifests, labels, datasets and batching: everything between audio on disk and a batch."""

from speechcl.data.dataset import TARGET_PAD, AudioDataset, crop_offset, normalize_wave
from speechcl.data.labels import Dictionary, letters_to_words, words_to_letters
from speechcl.data.loader import ResumableLoader, build_dataloader
from speechcl.data.manifest import Manifest, read_manifest, write_manifest
from speechcl.data.prepare import PrepareResult, prepare_audio, prepare_librispeech
from speechcl.data.sampler import BucketBatchSampler, batch_by_size, divisible_batches, shard_batches
from speechcl.data.shard_stream import ShardDataset, ShardStreamLoader, ShardStreamSampler, build_shard_loader
from speechcl.data.shards import ShardIndex, write_shards
from speechcl.data.subsets import parse_duration, parse_subset_spec, select_subset
from speechcl.data.synth import SynthConfig, plan_speakers, synthesize_corpus

__all__ = [
    "TARGET_PAD",
    "AudioDataset",
    "BucketBatchSampler",
    "Dictionary",
    "Manifest",
    "PrepareResult",
    "ResumableLoader",
    "ShardDataset",
    "ShardIndex",
    "ShardStreamLoader",
    "ShardStreamSampler",
    "SynthConfig",
    "batch_by_size",
    "build_dataloader",
    "build_shard_loader",
    "crop_offset",
    "divisible_batches",
    "letters_to_words",
    "normalize_wave",
    "parse_duration",
    "parse_subset_spec",
    "plan_speakers",
    "prepare_audio",
    "prepare_librispeech",
    "read_manifest",
    "select_subset",
    "shard_batches",
    "synthesize_corpus",
    "words_to_letters",
    "write_manifest",
    "write_shards",
]
