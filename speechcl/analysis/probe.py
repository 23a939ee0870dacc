"""Frozen-model probes, layer by layer and for the SUPERB weighted sum of layers.

:func:`run_probe` (what ``speechcl probe`` runs) measures what a small head can read from each hidden state
of a frozen model:

1. the model is loaded (:func:`speechcl.interop.loading.load_model_with_metadata`: speechcl, transformers or
   fairseq checkpoints) and the task's labels are read and checked against the manifests
   (:mod:`speechcl.analysis.probe_data`);
2. every hidden state (``0..L``) of every file is extracted once into ``OUT/cache/<model>/<split>/``
   (:mod:`speechcl.analysis.features_cache`; resumable, reused by reruns and by other probes);
3. per selected layer, a head (:class:`~speechcl.analysis.heads.ProbeHead`) is trained on the training split
   and scored on both splits; then one on the softmax-weighted sum of all ``L + 1`` hidden states, whose
   weights are learned with it. Every head first standardises each hidden state with the training split's
   per-layer mean and deviation (:mod:`speechcl.analysis.heads`), so layer scales do not bias the weights;
4. ``OUT/results.json``, ``OUT/results.md`` and ``OUT/<task>_layers.png`` are written atomically
   (:mod:`speechcl.analysis.probe_report`).

Tasks: ``phone`` — frame-level phone classification, linear (CPC's linear-separability probe), accuracy
over frames; ``ctc`` — a linear (or 2-layer) CTC head on letters, greedy decoding, CER (SUPERB PR/ASR in
miniature); ``speaker`` — mean-pooled features, utterance-level speaker identification, accuracy (SUPERB
SID); ``keyword`` — mean-pooled features, spoken-command classification, accuracy (SUPERB KS).

Dataset bias: the training and test splits may come from different conditions (seen vs unseen voices,
clean vs noisy); the score on the training split (``train_value``) is reported beside the test score so the
gap is visible. With ``train == test`` a deterministic ``holdout`` fraction of the split is the test set
(of each class for ``speaker`` and ``keyword``, so every class is seen in training); speaker
identification across different splits scores only the test speakers the training split has.

A test label outside the class list (a phone or keyword that neither the dictionary nor the training split
has) cannot be predicted: it counts as an error, and ``counts`` says how many there were.

Chance level: the share of the test labels (frames for ``phone``) that are the training split's most
common class; for ``ctc``, the CER of empty hypotheses (1.0).

Deterministic given ``seed`` (on one device and thread count): heads start from ``torch.manual_seed(seed)``
and batches are shuffled by a generator seeded with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from speechcl.analysis.features_cache import CachedSplit, cache_split, model_cache_name
from speechcl.analysis.heads import ProbeHead
from speechcl.analysis.probe_data import (
    SILENCE,
    TASKS,
    dictionary_path,
    evenly_spaced,
    holdout_split,
    label_path,
    read_aligned_lines,
    read_phone_frames,
    read_speakers,
    read_symbols,
)
from speechcl.asr.decode import GreedyDecoder
from speechcl.asr.score import score
from speechcl.data.labels import Dictionary, letters_to_words
from speechcl.data.manifest import Manifest, read_manifest
from speechcl.features.extractor import LAST, parse_layers
from speechcl.models.wav2vec2 import encoder_of

HEADS = ("linear", "mlp")
DEFAULT_EPOCHS = {"phone": 20, "ctc": 60, "speaker": 40, "keyword": 40}
METRICS = {"phone": "accuracy", "ctc": "cer", "speaker": "accuracy", "keyword": "accuracy"}
UTTERANCE_TASKS = ("speaker", "keyword")


@dataclass
class ProbeConfig:
    """Settings of one probe run (the ``speechcl probe`` flags).

    Attributes:
        task: ``phone``, ``ctc``, ``speaker`` or ``keyword``.
        model: a path :func:`speechcl.load_model` accepts.
        manifest_dir: holds ``<split>.tsv`` and the task's label files.
        train, test: split names; the same name holds out ``holdout`` of the split for testing.
        output: the output directory (features are cached in ``output/cache``).
        layers: hidden states that get a head of their own (``all``, an index or ``0,3,6``); the weighted sum
            always mixes all of them.
        head: ``linear`` or ``mlp`` (Linear, ReLU, Linear with ``hidden`` units).
        epochs: passes over the training split per head (``None``: :data:`DEFAULT_EPOCHS` of the task).
        lr: Adam learning rate of the heads (and of the weighted sum's weights).
        batch_size: utterances per update.
        max_utterances: use at most this many utterances of each split (evenly spread over it).
        normalize: per-utterance normalisation of the audio (``None``: what the checkpoint records).
        num_workers, max_tokens: of the feature extraction (``None``: its defaults).
    """

    task: str
    model: str
    manifest_dir: str
    train: str
    test: str
    output: str
    layers: str = "all"
    head: str = "linear"
    hidden: int = 256
    epochs: int | None = None
    lr: float = 2e-3
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"
    max_utterances: int | None = None
    holdout: float = 0.2
    normalize: bool | None = None
    num_workers: int | None = None
    max_tokens: int | None = None
    progress: bool = True

    def check(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown probe task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose linear or mlp")
        for name in ("epochs", "batch_size", "hidden", "max_utterances"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.task]

    def settings(self) -> dict[str, Any]:
        """What results.json records about how the numbers were made."""
        keep = ("layers", "head", "lr", "batch_size", "seed", "max_utterances", "holdout", "device")
        out: dict[str, Any] = {k: getattr(self, k) for k in keep}
        out["epochs"] = self.num_epochs
        out["hidden"] = self.hidden if self.head == "mlp" else None
        return out


# --- data ----------------------------------------------------------------------------------------------


@dataclass
class ProbeSet:
    """One side (train or test) of a probe.

    Attributes:
        features: per utterance ``[L + 1, frames, D]`` (memory-mapped cache files).
        targets: per utterance: ``[frames]`` int64 phone classes (``phone``), letter indices (``ctc``), or
            one class index (``speaker``, ``keyword``).
        texts: ``ctc``: the reference transcripts (words).
        pooled: ``speaker``/``keyword``: ``[N, L + 1, D]`` time-averaged features (:func:`pool_features`).
        rows: each utterance's position in its split's manifest.
    """

    name: str
    features: list[np.ndarray]
    targets: list[Any]
    texts: list[str] = field(default_factory=list)
    pooled: np.ndarray | None = None
    rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class _Labels:
    """A split's items with their raw labels (before features exist)."""

    split: str
    manifest: Manifest
    indices: list[int]  # positions in the split's manifest
    targets: list[Any]
    texts: list[str]


def _read_task_labels(cfg: ProbeConfig, split: str, conv_layers: Any) -> tuple[Manifest, list[Any], list[str]]:
    """``(manifest, raw labels, reference texts)`` of a split (raw: strings, or phone strings per frame)."""
    tsv = Path(cfg.manifest_dir) / f"{split}.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv} not found: --train/--test name splits with a manifest in --manifest-dir")
    manifest = read_manifest(tsv)
    if len(manifest) == 0:
        raise ValueError(f"{tsv} lists no files")
    path = label_path(cfg.manifest_dir, split, cfg.task)
    if cfg.task == "phone":
        return manifest, read_phone_frames(path, manifest, tsv, conv_layers), []
    if cfg.task == "speaker":
        return manifest, read_speakers(cfg.manifest_dir, split, manifest, tsv), []
    lines = [line.strip() for line in read_aligned_lines(path, manifest, tsv)]
    if cfg.task == "ctc":
        return manifest, lines, [letters_to_words(line) for line in lines]
    return manifest, lines, []


UNSEEN = -1
"""Target of a test label outside the class list (a phone or keyword the training split lacks): never predicted,
so it counts as an error."""


def _encode(cfg: ProbeConfig, labels: _Labels, classes: list[str] | Dictionary, test: bool) -> tuple[list[Any], int]:
    """Targets of ``labels`` and how many test units have a class outside ``classes`` (encoded :data:`UNSEEN`).

    A training label outside the class list is a ``ValueError`` naming its file and line.
    """
    if cfg.task == "ctc":
        assert isinstance(classes, Dictionary)
        return [classes.encode(line) for line in labels.targets], 0
    assert isinstance(classes, list)
    path = label_path(cfg.manifest_dir, labels.split, cfg.task)
    index = {c: i for i, c in enumerate(classes)}
    out: list[Any] = []
    unseen = 0
    for row, target in zip(labels.indices, labels.targets):
        units = target if cfg.task == "phone" else [target]
        unknown = sorted(set(units) - set(index))
        if unknown and not test:
            where = dictionary_path(cfg.manifest_dir, cfg.task) or "the training speakers"
            raise ValueError(f"{path}:{row + 1}: {cfg.task} label(s) {', '.join(map(repr, unknown))} not in {where}; "
                             "add them or fix the labels")
        codes = [index.get(u, UNSEEN) for u in units]
        unseen += codes.count(UNSEEN)
        out.append(np.array(codes, dtype=np.int64) if cfg.task == "phone" else codes[0])
    return out, unseen


def _classes(cfg: ProbeConfig, train: _Labels) -> list[str] | Dictionary:
    """The output classes: the task's dictionary, or the training split's speakers (sorted)."""
    if cfg.task == "speaker":
        return sorted(set(train.targets))
    path = dictionary_path(cfg.manifest_dir, cfg.task)
    assert path is not None
    if cfg.task == "ctc":
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the ctc probe needs the letter dictionary "
                                    "(`speechcl prepare` writes it)")
        return Dictionary.load(path)
    symbols = read_symbols(path)
    if cfg.task == "phone" and SILENCE not in symbols:
        symbols.append(SILENCE)
    return symbols


def _select(cfg: ProbeConfig, conv_layers: Any) -> tuple[_Labels, _Labels, dict[str, Any]]:
    """The train and test items (after ``max_utterances`` and the holdout) with their raw labels."""
    notes: dict[str, Any] = {}
    manifest, targets, texts = _read_task_labels(cfg, cfg.train, conv_layers)

    def labels_of(split: str, man: Manifest, tg: list[Any], tx: list[str], idx: list[int]) -> _Labels:
        return _Labels(split, man, idx, [tg[i] for i in idx], [tx[i] for i in idx] if tx else [])

    if cfg.test == cfg.train:
        chosen = evenly_spaced(len(manifest), cfg.max_utterances)
        groups = [targets[i] if cfg.task in UTTERANCE_TASKS else 0 for i in chosen]
        train_pos, test_pos = holdout_split(groups, cfg.holdout)
        if not train_pos or not test_pos:
            raise ValueError(f"holding out {cfg.holdout} of {len(chosen)} utterances of {cfg.train} leaves "
                             f"{len(train_pos)} for training and {len(test_pos)} for testing; use more utterances "
                             "or another --test split")
        train = labels_of(cfg.train, manifest, targets, texts, [chosen[p] for p in train_pos])
        test = labels_of(cfg.test, manifest, targets, texts, [chosen[p] for p in test_pos])
        notes["test_is_holdout_of_train"] = True
    else:
        train = labels_of(cfg.train, manifest, targets, texts, evenly_spaced(len(manifest), cfg.max_utterances))
        t_manifest, t_targets, t_texts = _read_task_labels(cfg, cfg.test, conv_layers)
        test = labels_of(cfg.test, t_manifest, t_targets, t_texts, evenly_spaced(len(t_manifest), cfg.max_utterances))
    if cfg.task == "speaker":
        known = set(train.targets)
        keep = [j for j, s in enumerate(test.targets) if s in known]
        if not keep:
            raise ValueError(f"none of the {len(set(test.targets))} speakers of {cfg.test} appears in {cfg.train}: "
                             "speaker identification needs the test speakers in the training split; pass the same "
                             f"split as --train and --test to hold out {cfg.holdout} of each speaker's utterances")
        if len(keep) < len(test.targets):
            notes["test_utterances_of_unseen_speakers_dropped"] = len(test.targets) - len(keep)
        test = _Labels(test.split, test.manifest, [test.indices[j] for j in keep], [test.targets[j] for j in keep], [])
    return train, test, notes


def _cache(cfg: ProbeConfig, model: torch.nn.Module, normalize: bool, wanted: list[_Labels]
           ) -> dict[tuple[str, int], np.ndarray | None]:
    """Features of every wanted item, extracted once per split; ``(split, index) → [L + 1, T, D]`` or None."""
    root = Path(cfg.output) / "cache" / model_cache_name(cfg.model)
    out: dict[tuple[str, int], np.ndarray | None] = {}
    by_split: dict[str, tuple[Manifest, set[int]]] = {}
    for labels in wanted:
        by_split.setdefault(labels.split, (labels.manifest, set()))[1].update(labels.indices)
    for split, (manifest, indices) in by_split.items():
        order = sorted(indices)
        cached: CachedSplit = cache_split(model, manifest.subset(order), root / split, normalize=normalize,
                                          device=cfg.device, max_tokens=cfg.max_tokens,
                                          num_workers=cfg.num_workers, progress=cfg.progress)
        out.update({(split, i): f for i, f in zip(order, cached.features)})
    return out


def _probe_set(cfg: ProbeConfig, labels: _Labels, encoded: list[Any], feats: dict[tuple[str, int], Any],
               skipped: list[str]) -> ProbeSet:
    keep = [j for j, i in enumerate(labels.indices) if feats[(labels.split, i)] is not None]
    skipped.extend(labels.manifest.full_path(i) for i in labels.indices if feats[(labels.split, i)] is None)
    if not keep:
        raise ValueError(f"no features could be extracted for the {len(labels.indices)} utterances of {labels.split}")
    features = [feats[(labels.split, labels.indices[j])] for j in keep]
    data = ProbeSet(labels.split, features, [encoded[j] for j in keep],
                    [labels.texts[j] for j in keep] if labels.texts else [], rows=[labels.indices[j] for j in keep])
    if cfg.task in UTTERANCE_TASKS:
        data.pooled = pool_features(features)
    return data


def pool_features(features: list[np.ndarray]) -> np.ndarray:
    """Time averages ``[N, L + 1, D]`` float32 of utterances ``[L + 1, frames, D]`` (the utterance tasks' inputs)."""
    return np.stack([f.mean(axis=1, dtype=np.float64).astype(np.float32) for f in features])


def feature_statistics(data: ProbeSet, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-layer ``(mean, std)`` ``[L + 1, D]`` over the training frames (pooled vectors for utterance tasks)."""
    if data.pooled is not None:
        x = data.pooled.astype(np.float64)
        total, squares, count = x.sum(axis=0), (x * x).sum(axis=0), x.shape[0]
    else:
        total = squares = 0.0
        count = 0
        for f in data.features:
            x = np.asarray(f, dtype=np.float64)
            total = total + x.sum(axis=1)
            squares = squares + (x * x).sum(axis=1)
            count += x.shape[1]
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var + eps)).float()


# --- batches, losses, scores ---------------------------------------------------------------------------


def _batch(task: str, data: ProbeSet, idx: list[int], layers: list[int]) -> dict[str, Any]:
    """Inputs and targets of utterances ``idx`` restricted to ``layers``.

    ``x``: ``[B, L', D]`` (utterance tasks), ``[frames, L', D]`` (phone) or ``[B, T, L', D]`` with ``lengths``
    (ctc).
    """
    if task in UTTERANCE_TASKS:
        assert data.pooled is not None
        x = torch.from_numpy(np.ascontiguousarray(data.pooled[idx][:, layers]))
        return {"x": x, "y": torch.tensor([data.targets[i] for i in idx], dtype=torch.int64)}
    parts = [np.asarray(data.features[i][layers]).transpose(1, 0, 2) for i in idx]  # [T, L', D] each
    if task == "phone":
        return {"x": torch.from_numpy(np.ascontiguousarray(np.concatenate(parts))),
                "y": torch.from_numpy(np.concatenate([data.targets[i] for i in idx]))}
    lengths = [p.shape[0] for p in parts]
    x = torch.zeros(len(parts), max(lengths), *parts[0].shape[1:])
    for b, p in enumerate(parts):
        x[b, : p.shape[0]] = torch.from_numpy(np.ascontiguousarray(p))
    targets = [data.targets[i] for i in idx]
    return {"x": x, "lengths": torch.tensor(lengths, dtype=torch.int64),
            "targets": torch.tensor([t for row in targets for t in row], dtype=torch.int64),
            "target_lengths": torch.tensor([len(row) for row in targets], dtype=torch.int64), "idx": idx}


def _loss(task: str, head: ProbeHead, batch: dict[str, Any], device: torch.device) -> Tensor:
    logits = head(batch["x"].to(device))
    if task != "ctc":
        return F.cross_entropy(logits, batch["y"].to(device))
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [T, B, V]
    return F.ctc_loss(log_probs, batch["targets"].to(device), batch["lengths"].to(device),
                      batch["target_lengths"].to(device), blank=Dictionary.blank_index, reduction="mean",
                      zero_infinity=True)


def _spans(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


@torch.no_grad()
def evaluate_head(task: str, head: ProbeHead, data: ProbeSet, layers: list[int], batch_size: int,
                  device: torch.device, dictionary: Dictionary | None = None) -> float:
    """The task's metric of ``head`` on ``data``: accuracy (over frames for phone) or CER (ctc)."""
    head.eval()
    if task == "ctc":
        assert dictionary is not None
        decode = GreedyDecoder(dictionary)
        hyps: list[str] = []
        for idx in _spans(len(data), batch_size):
            batch = _batch(task, data, idx, layers)
            hyps.extend(decode(head(batch["x"].to(device)).cpu(), batch["lengths"]))
        return float(score(data.texts, hyps).cer)
    correct = total = 0
    for idx in _spans(len(data), batch_size):
        batch = _batch(task, data, idx, layers)
        predicted = head(batch["x"].to(device)).argmax(-1).cpu()
        correct += int((predicted == batch["y"]).sum())
        total += int(batch["y"].numel())
    return correct / total


def train_head(task: str, data: ProbeSet, layers: list[int], num_classes: int, mean: Tensor, std: Tensor, *,
               epochs: int, lr: float, batch_size: int, seed: int, hidden: int | None = None,
               device: torch.device | str = "cpu", bar: tqdm | None = None) -> ProbeHead:
    """Train a :class:`ProbeHead` on hidden states ``layers`` of ``data`` (Adam, shuffled utterance batches).

    Args:
        mean, std: ``[L + 1, D]`` statistics of all hidden states (the head keeps the rows of ``layers``).
        hidden: ``None`` for a linear head, else the MLP width.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    head = ProbeHead(mean[layers], std[layers], num_classes, hidden).to(device)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(data), generator=generator).tolist()
        total = 0.0
        steps = 0
        for start in range(0, len(order), batch_size):
            loss = _loss(task, head, _batch(task, data, order[start: start + batch_size], layers), device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        if bar is not None:
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{total / max(steps, 1):.3f}", refresh=True)
    return head.eval()


def chance_level(task: str, train: ProbeSet, test: ProbeSet) -> float:
    """Accuracy of always predicting the training split's most common class; for ctc, the CER of empty output."""
    if task == "ctc":
        return float(score(test.texts, [""] * len(test)).cer)
    flat = [int(t) for row in train.targets for t in np.atleast_1d(row)]
    majority = Counter(flat).most_common(1)[0][0]
    hits = sum(int((np.atleast_1d(row) == majority).sum()) for row in test.targets)
    units = sum(np.atleast_1d(row).size for row in test.targets)
    return hits / units


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """What ``OUT/results.json`` holds (see the module docstring)."""

    task: str
    metric: str
    higher_is_better: bool
    chance: float
    per_layer: dict[str, float]
    train_value: dict[str, float]
    weighted_sum: float
    weighted_sum_train_value: float
    weights: list[float]
    best_layer: int
    train: str
    test: str
    model: str
    num_hidden_states: int
    counts: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _units(task: str, data: ProbeSet) -> int:
    """Frames (phone), letters (ctc) or utterances scored."""
    if task in ("phone", "ctc"):
        return int(sum(len(t) for t in data.targets))
    return len(data)


@dataclass
class PreparedProbe:
    """A probe whose labels are read and whose features are cached: what :func:`fit_probe` trains heads on.

    Attributes:
        cfg: the settings.
        train, test: the two sides (features memory-mapped from the cache; ``rows`` locate them in
            ``train_manifest`` / ``test_manifest``).
        classes: the output classes (the letter :class:`Dictionary` for ``ctc``).
        num_layers: ``L`` (hidden states ``0..L``); ``layers``: those that get a head of their own.
        conv_layers: the model's feature encoder (its frame geometry).
        normalize: whether the audio was normalised per utterance before the model.
        notes, skipped: what ``counts`` reports (held-out test, dropped utterances; files without features).
    """

    cfg: ProbeConfig
    train: ProbeSet
    test: ProbeSet
    train_manifest: Manifest
    test_manifest: Manifest
    classes: list[str] | Dictionary
    num_layers: int
    layers: list[int]
    conv_layers: Any
    normalize: bool
    notes: dict[str, Any]
    skipped: list[str]

    @property
    def dictionary(self) -> Dictionary | None:
        return self.classes if isinstance(self.classes, Dictionary) else None


def prepare_probe(cfg: ProbeConfig, loaded: tuple[torch.nn.Module, Any] | None = None
                  ) -> tuple[PreparedProbe, torch.nn.Module]:
    """Steps 1 and 2 of the module docstring: ``(prepared probe, the model's encoder)``.

    Args:
        loaded: ``(model, metadata)`` of :func:`~speechcl.interop.loading.load_model_with_metadata` for
            ``cfg.model`` when the caller has it already (else it is loaded).

    Raises:
        as :func:`run_probe`.
    """
    from speechcl.interop.loading import load_model_with_metadata

    cfg.check()
    model, meta = loaded if loaded is not None else load_model_with_metadata(cfg.model)
    encoder = encoder_of(model)
    num_layers = encoder.cfg.encoder_layers
    layers = list(parse_layers(cfg.layers, num_layers))
    if LAST in layers:
        raise ValueError("--layers takes hidden-state indices (0..L) or 'all'; 'last' is not probed separately")
    normalize = meta.normalize if cfg.normalize is None else cfg.normalize

    train_labels, test_labels, notes = _select(cfg, encoder.cfg.conv_layers)
    classes = _classes(cfg, train_labels)
    train_encoded, _ = _encode(cfg, train_labels, classes, test=False)
    test_encoded, unseen = _encode(cfg, test_labels, classes, test=True)
    if unseen:
        notes[f"test_{'frames' if cfg.task == 'phone' else 'utterances'}_of_classes_not_in_training"] = unseen
    feats = _cache(cfg, encoder, normalize, [train_labels, test_labels])
    skipped: list[str] = []
    train = _probe_set(cfg, train_labels, train_encoded, feats, skipped)
    test = _probe_set(cfg, test_labels, test_encoded, feats, skipped)
    prepared = PreparedProbe(cfg, train, test, train_labels.manifest, test_labels.manifest, classes, num_layers,
                             layers, encoder.cfg.conv_layers, bool(normalize), notes, skipped)
    return prepared, encoder


def fit_probe(prepared: PreparedProbe,
              on_head: Callable[[list[int], ProbeHead], None] | None = None) -> ProbeResult:
    """Step 3 of the module docstring: a head per selected layer and one on the weighted sum, scored.

    Args:
        on_head: called with ``(hidden states the head reads, trained head)`` after each head is trained
            (``[k]`` for layer ``k``, ``[0..L]`` for the weighted sum last), e.g. to score it on other data.
    """
    cfg, train, test = prepared.cfg, prepared.train, prepared.test
    device = torch.device(cfg.device)
    num_layers, layers = prepared.num_layers, prepared.layers
    num_classes = len(prepared.classes)
    dictionary = prepared.dictionary
    mean, std = feature_statistics(train)
    hidden = cfg.hidden if cfg.head == "mlp" else None
    options = dict(epochs=cfg.num_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, hidden=hidden,
                   device=device)
    per_layer: dict[str, float] = {}
    train_value: dict[str, float] = {}
    runs = [[k] for k in layers] + [list(range(num_layers + 1))]
    with tqdm(runs, desc=f"probe {cfg.task}", unit="head", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for chosen in bar:
            bar.set_description(f"probe {cfg.task} " + (f"layer {chosen[0]}" if len(chosen) == 1 else "weighted sum"))
            head = train_head(cfg.task, train, chosen, num_classes, mean, std, bar=bar, **options)
            values = [evaluate_head(cfg.task, head, d, chosen, cfg.batch_size, device, dictionary)
                      for d in (test, train)]
            if len(chosen) == 1:
                per_layer[str(chosen[0])], train_value[str(chosen[0])] = values
            else:
                mixed, mixed_train = values
                weights = [float(w) for w in head.mix.weights().detach().cpu()]
            if on_head is not None:
                on_head(chosen, head)

    higher = METRICS[cfg.task] == "accuracy"
    best = max(per_layer, key=lambda k: per_layer[k] if higher else -per_layer[k])
    counts: dict[str, Any] = {
        "train_utterances": len(train), "test_utterances": len(test),
        "train_units": _units(cfg.task, train), "test_units": _units(cfg.task, test),
        "unit": {"phone": "frames", "ctc": "letters"}.get(cfg.task, "utterances"),
        "classes": num_classes, "skipped_files": list(prepared.skipped), **prepared.notes,
    }
    return ProbeResult(
        task=cfg.task, metric=METRICS[cfg.task], higher_is_better=higher, chance=chance_level(cfg.task, train, test),
        per_layer=per_layer, train_value=train_value, weighted_sum=mixed, weighted_sum_train_value=mixed_train,
        weights=weights, best_layer=int(best), train=cfg.train, test=cfg.test, model=str(cfg.model),
        num_hidden_states=num_layers + 1, counts=counts, settings=cfg.settings(),
    )


def run_probe(cfg: ProbeConfig) -> ProbeResult:
    """Run one probe end to end and write its outputs (see the module docstring).

    Raises:
        FileNotFoundError: a missing manifest, label or dictionary file, or model.
        ValueError: labels that do not fit the manifest or the model's frame count, bad settings, settings
            that differ from those of an existing feature cache.
        Preempted: a signal stopped the feature extraction (rerun to continue).
    """
    from speechcl.analysis.probe_report import write_outputs

    prepared, encoder = prepare_probe(cfg)
    del encoder  # the heads train on cached features only
    result = fit_probe(prepared)
    write_outputs(result, cfg.output)
    return result
