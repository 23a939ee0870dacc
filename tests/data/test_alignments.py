"""Alignments from espeak-ng's synthesis events, and their frame labels at the model's frame rate."""

import multiprocessing as mp
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcl.data.alignments import (
    SIL,
    Alignment,
    Segment,
    alignment_from_events,
    alignment_path,
    frame_labels,
    phone_label,
    read_alignments,
    rescale,
    write_alignments,
)
from speechcl.data.espeak import SynthEvent
from speechcl.data.labels import read_lines
from speechcl.data.manifest import read_manifest
from speechcl.data.prepare import REPORT_NAME, prepare_librispeech
from speechcl.models.config import BASE_CONV_LAYERS
from speechcl.models.feature_encoder import num_frames

from .conftest import SMALL

# ----------------------------------------------------------------------------- frame labels (hand-built)


@pytest.mark.parametrize("num_samples", [0, 399, 400, 719, 720, 1040, 16000, 16001, 16239, 16240])
def test_frame_count_equals_model_frames(num_samples):
    labels = frame_labels([Segment(0, num_samples, "a")], num_samples)
    assert len(labels) == num_frames(num_samples, BASE_CONV_LAYERS)
    assert labels == ["a"] * len(labels)
    assert [len(frame_labels([], n)) for n in (399, 400, 719, 720, 16000, 16001)] == [0, 1, 1, 2, 49, 49]


def test_frame_takes_the_phone_at_its_centre():
    # frame t covers [320 t, 320 t + 400) and its centre is 320 t + 200: centres 200, 520, 840, 1160
    segments = [Segment(0, 200, "a"), Segment(200, 521, "b"), Segment(521, 839, "c"), Segment(900, 1000, "d"),
                Segment(1000, 1400, "e")]
    assert frame_labels(segments, 1360) == ["b", "b", SIL, "e"]  # (1360 - 400) / 320 + 1 = 4 frames
    # a boundary on a centre: the later phone (half-open segments)
    assert frame_labels([Segment(0, 520, "x"), Segment(520, 900, "y")], 720) == ["x", "y"]
    # a segment ending on a centre does not cover it
    assert frame_labels([Segment(0, 200, "x")], 400) == [SIL]
    # overlapping segments: the later one wins
    assert frame_labels([Segment(0, 1000, "x"), Segment(500, 600, "y")], 1040) == ["x", "y", "x"]


def test_frame_labels_other_geometry():
    conv = ((8, 4, 2), (8, 2, 2))  # hop 4, receptive field 6, centre 3
    labels = frame_labels([Segment(0, 7, "a"), Segment(7, 20, "b")], 13, conv)
    assert len(labels) == num_frames(13, conv) == 2  # centres 3 and 7
    assert labels == ["a", "b"]
    with pytest.raises(ValueError, match="num_samples"):
        frame_labels([], -1)


# ----------------------------------------------------------------------------- from events (hand-built)


def _events():
    # "THE QUICK FOR THE" with espeak-ng joining "FOR THE" into one word, as it does
    return [
        SynthEvent("sentence", 0, 1), SynthEvent("word", 0, 1, 3), SynthEvent("phoneme", 10, 1, name="D"),
        SynthEvent("phoneme", 30, 1, name="@2"), SynthEvent("word", 45, 5, 5), SynthEvent("phoneme", 60, 5, name="k"),
        SynthEvent("phoneme", 70, 5, name="w"), SynthEvent("phoneme", 70, 5, name="'I"),
        SynthEvent("phoneme", 90, 5, name="k"), SynthEvent("phoneme", 100, 11, name="_!"),
        SynthEvent("word", 120, 11, 3), SynthEvent("phoneme", 120, 11, name="f"),
        SynthEvent("phoneme", 130, 11, name=",O@"), SynthEvent("phoneme", 150, 11, name="D"),
        SynthEvent("phoneme", 160, 11, name="@"), SynthEvent("phoneme", 175, 19, name="_:"),
        SynthEvent("phoneme", 190, 19, name="_"), SynthEvent("end", 190, 17),
    ]


def test_alignment_from_events():
    alignment = alignment_from_events(_events(), "THE QUICK FOR THE", 200)
    assert alignment.phones == [
        Segment(0, 10, SIL), Segment(10, 30, "D"), Segment(30, 60, "@2"), Segment(60, 70, "k"),  # w: no duration
        Segment(70, 90, "I"), Segment(90, 100, "k"), Segment(100, 120, SIL), Segment(120, 130, "f"),
        Segment(130, 150, "O@"), Segment(150, 160, "D"), Segment(160, 175, "@"), Segment(175, 200, SIL),
    ]
    assert alignment.words == [Segment(10, 60, "THE"), Segment(60, 100, "QUICK"), Segment(120, 175, "FOR THE")]
    assert alignment.phone_sequence() == ["D", "@2", "k", "I", "k", "f", "O@", "D", "@"]
    assert [phone_label(m) for m in ("'aU", ",aU", "aU", "_:", "_", ";", "t#")] == ["aU", "aU", "aU", SIL, SIL, ";",
                                                                                    "t#"]
    # the last phoneme ends at the end event, not with the audio; a word whose only phoneme has no
    # duration joins the word before it
    events = [SynthEvent("word", 0, 1, 2), SynthEvent("phoneme", 5, 1, name="g"), SynthEvent("phoneme", 20, 1, name="oU"),
              SynthEvent("word", 40, 4, 1), SynthEvent("phoneme", 40, 4, name="l"), SynthEvent("word", 40, 6, 2),
              SynthEvent("phoneme", 40, 6, name="'V"), SynthEvent("phoneme", 45, 6, name="p"), SynthEvent("end", 50, 8)]
    alignment = alignment_from_events(events, "GO L UP", 64)
    assert alignment.phones == [Segment(0, 5, SIL), Segment(5, 20, "g"), Segment(20, 40, "oU"), Segment(40, 45, "V"),
                                Segment(45, 50, "p"), Segment(50, 64, SIL)]
    assert alignment.words == [Segment(5, 40, "GO L"), Segment(40, 50, "UP")]
    with pytest.raises(ValueError, match="not in order"):
        alignment_from_events(_events()[::-1], "THE QUICK FOR THE", 200)
    with pytest.raises(ValueError, match="not in order"):
        alignment_from_events(_events(), "THE QUICK FOR THE", 150)


def test_rescale_maps_and_retiles():
    alignment = Alignment([Segment(10, 60, "W")], [Segment(0, 10, SIL), Segment(10, 60, "a"), Segment(60, 64, SIL)])
    # 22050 -> 16000 Hz, after 100 samples of leading silence, in a 200-sample file
    out = rescale(alignment, 22050, 16000, 100, 200)
    assert out.words == [Segment(107, 144, "W")]  # 10 * 16000 / 22050 = 7.26, 60 * ... = 43.54
    assert out.phones == [Segment(0, 107, SIL), Segment(107, 144, "a"), Segment(144, 200, SIL)]
    assert rescale(alignment, 16000, 16000, 0, 30).phones == [Segment(0, 10, SIL), Segment(10, 30, "a")]


def test_file_round_trip_and_errors(tmp_path):
    a = Alignment([Segment(3, 9, "HI THERE")], [Segment(0, 3, SIL), Segment(3, 9, "h"), Segment(9, 12, SIL)])
    b = Alignment([Segment(1, 2, "X")], [Segment(0, 2, "x")])
    path = alignment_path(tmp_path / "12-34.trans.txt")
    assert path.name == "12-34.align.tsv"
    write_alignments(path, [("12-34-0000", a), ("12-34-0001", b)])
    assert path.read_text().splitlines()[0] == "12-34-0000\tword\t3\t9\tHI THERE"
    assert read_alignments(path) == {"12-34-0000": a, "12-34-0001": b}
    for bad, message in (("u\tword\t1\t2", "expected"), ("u\tsyllable\t1\t2\tx", "expected"),
                         ("u\tphone\t1\tx\ty", "integers"), ("u\tphone\t5\t2\ty", "bad segment")):
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message):
            read_alignments(path)


# ----------------------------------------------------------------------------- real espeak-ng


def _synth_in_child(args):
    option, text = args
    import speechcl.data.espeak as espeak

    espeak._INITIALIZE_PHONEME_EVENTS = option
    audio, events = espeak.Espeak().synthesize_events(text, "en-GB-scotland+f2", 160, 60, 40, seed=3)
    return audio.tobytes(), len(events)


def test_phoneme_events_leave_the_audio_unchanged():
    text = "THE QUICK BROWN FOX DID NOT JUMP OVER YESTERDAY'S FENCE"
    with mp.get_context("fork").Pool(1, maxtasksperchild=1) as pool:  # one engine per process
        with_events, without = pool.map(_synth_in_child, [(1, text), (0, text)], chunksize=1)
    assert with_events[0] == without[0]
    assert with_events[1] > without[1]  # the phoneme events were on in one and off in the other


def test_events_of_real_utterances():
    from speechcl.data.espeak import Espeak
    from speechcl.data.text import SentenceGenerator

    engine = Espeak()
    texts = SentenceGenerator(21)
    plain = ["YES NO UP DOWN LEFT RIGHT", "THE OLD CAPTAIN SOLD HIS GREEN BOAT", "WHERE DID THE SILVER BIRD GO"]
    for i, text in enumerate(plain + [texts.sentence() for _ in range(6)]):
        audio, events = engine.synthesize_events(text, "en-US+m3", 170, 50, 50, seed=i)
        samples = [e.sample for e in events]
        assert samples == sorted(samples) and 0 <= samples[0] and samples[-1] <= audio.size
        assert events[-1].kind == "end"
        kinds = Counter(e.kind for e in events)
        assert kinds["phoneme"] >= len(text.split())
        if i < len(plain):
            assert kinds["word"] == len(text.split())
        alignment = alignment_from_events(events, text, audio.size)
        assert " ".join(w.label for w in alignment.words) == text
        assert all(w.start < w.end for w in alignment.words)


# ----------------------------------------------------------------------------- the corpus and prepare


def test_corpus_alignments(corpus):
    chapters = sorted(corpus.rglob("*.trans.txt"))
    assert chapters
    for trans in chapters:
        alignments = read_alignments(alignment_path(trans))
        lines = [line.split(" ", 1) for line in trans.read_text().splitlines()]
        assert list(alignments) == [utt_id for utt_id, _ in lines]
        for utt_id, text in lines:
            alignment = alignments[utt_id]
            wave, rate = sf.read(trans.parent / f"{utt_id}.flac", dtype="float32")
            phones = alignment.phones
            assert phones[0].start == 0 and phones[-1].end == wave.size
            assert all(p.end == q.start for p, q in zip(phones, phones[1:])) and all(p.start < p.end for p in phones)
            assert phones[0].label == phones[-1].label == SIL  # the pauses added around the speech
            assert " ".join(w.label for w in alignment.words) == text
            words = alignment.words
            assert all(a.end <= b.start for a, b in zip(words, words[1:]))
            assert words[0].start == next(p.start for p in phones if p.label != SIL)
            assert words[-1].end == max(p.end for p in phones if p.label != SIL)
            # the speech lies inside the phones: nearly all the energy, while sil is silence and pauses
            energy = wave.astype(np.float64) ** 2
            spoken = sum(energy[p.start:p.end].sum() for p in phones if p.label != SIL)
            assert spoken / energy.sum() > 0.97, utt_id


def test_prepare_writes_speakers_and_phone_labels(corpus, prepared):
    for split in (SMALL.train_split, "dev-clean", "test-clean"):
        manifest = read_manifest(prepared / f"{split}.tsv")
        spk = read_lines(prepared / f"{split}.spk")
        phn = read_lines(prepared / f"{split}.phn")
        frames = read_lines(prepared / f"{split}.phn_frames")
        assert len(spk) == len(phn) == len(frames) == len(manifest)
        for rel, size, speaker, phones, line in zip(manifest.paths, manifest.sizes, spk, phn, frames):
            assert speaker == Path(rel).parts[1]
            utt_id = Path(rel).stem
            alignment = read_alignments(alignment_path(next((corpus / rel).parent.glob("*.trans.txt"))))[utt_id]
            assert phones.split() == alignment.phone_sequence() and SIL not in phones.split()
            labels = line.split()
            assert len(labels) == num_frames(size, BASE_CONV_LAYERS)
            assert labels == frame_labels(alignment.phones, size)
    counts = {s: int(c) for s, c in (line.split() for line in read_lines(prepared / "dict.phn.txt"))}
    train_frames = Counter(x for line in read_lines(prepared / f"{SMALL.train_split}.phn_frames") for x in line.split())
    assert {s: c for s, c in counts.items() if c} == dict(train_frames) and SIL in counts
    train_phones = {x for line in read_lines(prepared / f"{SMALL.train_split}.phn") for x in line.split()}
    assert train_phones <= set(counts)
    assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_prepare_without_every_alignment(corpus, tmp_path):
    root = tmp_path / "Libri"
    shutil.copytree(corpus / "dev-clean", root / "dev-clean")
    out = tmp_path / "data"
    prepare_librispeech(root, out)
    assert (out / "dev-clean.phn_frames").exists() and (out / "dict.phn.txt").exists()  # dev is the training set here
    first = sorted(root.rglob("*.align.tsv"))[0]
    lines = first.read_text().splitlines()
    dropped = lines[0].split("\t")[0]
    first.write_text("".join(f"{line}\n" for line in lines if not line.startswith(dropped + "\t")))
    result = prepare_librispeech(root, out)
    assert not (out / "dev-clean.phn").exists() and not (out / "dev-clean.phn_frames").exists()
    assert not (out / "dict.phn.txt").exists()
    assert (out / "dev-clean.spk").exists()  # speakers never need alignments
    notes = [r for r in result.report if r.action == "note"]
    assert len(notes) == 1 and "1 of" in notes[0].reason
    assert "no alignment" in (out / REPORT_NAME).read_text()
    first.write_text("garbage line\n")
    result = prepare_librispeech(root, out)
    assert any("alignments not used" in r.reason for r in result.report)
    assert result.items["dev-clean"] == len(read_manifest(out / "dev-clean.tsv"))


def test_phone_dictionary_lists_phones_without_frames(corpus, tmp_path):
    root = tmp_path / "Libri"
    shutil.copytree(corpus / "dev-clean", root / "train-x")
    path = sorted(root.rglob("*.align.tsv"))[0]
    alignments = read_alignments(path)
    utt_id, alignment = next(iter(alignments.items()))
    # cut 5 samples off the start of a phone that starts just after a frame centre: they cover no centre
    index = next(i for i, p in enumerate(alignment.phones)
                 if p.label != SIL and p.end - p.start > 10 and 0 < (p.start - 200) % 320 < 300)
    phone = alignment.phones[index]
    alignment.phones[index:index + 1] = [Segment(phone.start, phone.start + 5, "QQ"), phone._replace(start=phone.start + 5)]
    write_alignments(path, alignments.items())
    prepare_librispeech(root, tmp_path / "data")
    counts = dict(line.split() for line in read_lines(tmp_path / "data" / "dict.phn.txt"))
    assert counts["QQ"] == "0"
    assert "QQ" in read_lines(tmp_path / "data" / "train-x.phn")[0].split()
