"""Speech recognition with CTC models: decoding (greedy, beam + n-gram LM), scoring, alignment."""

from speechcl.asr.align import WordTiming, align_words
from speechcl.asr.decode import BeamSearchDecoder, GreedyDecoder, build_decoder, ctc_collapse, greedy_decode
from speechcl.asr.lm import NgramLM, build_lm, estimate_kneser_ney, read_arpa, write_arpa, write_lexicon
from speechcl.asr.recognizer import Recognizer, labels_to_dictionary, resolve_dictionary
from speechcl.asr.score import ErrorCounts, Score, score
from speechcl.asr.transcribe import chunked_logits, transcribe_files

__all__ = [
    "BeamSearchDecoder",
    "ErrorCounts",
    "GreedyDecoder",
    "NgramLM",
    "Recognizer",
    "Score",
    "WordTiming",
    "align_words",
    "build_decoder",
    "build_lm",
    "chunked_logits",
    "ctc_collapse",
    "estimate_kneser_ney",
    "greedy_decode",
    "labels_to_dictionary",
    "read_arpa",
    "resolve_dictionary",
    "score",
    "transcribe_files",
    "write_arpa",
    "write_lexicon",
]
