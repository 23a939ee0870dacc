"""A seeded chain of waveform augmentations applied to a padded batch, per item and epoch.

Configuration (``AugmentConfig.transforms``, Hydra group ``conf/augment/``) is a list of mappings
``{"name": <transform>, "p": <probability, default 1>, <param>: <value>, ...}`` applied in order. A parameter
value is

- a scalar: that fixed value (``db: 3``, ``color: pink``);
- a 2-list ``[lo, hi]`` of numbers: uniform in the closed range (integers for integer parameters);
- a list of 3 or more numbers, or of strings: one of them, uniformly (``factor: [0.9, 1.0, 1.1]``);
- ``{choice: [a, b]}``: one of any number of values (a 2-choice, which a 2-list would read as a range).

Transforms and their parameters (defaults in brackets): see ``TRANSFORMS`` or ``describe()``.

Determinism: for item ``ids[b]`` at epoch ``epoch[b]`` and view ``stream``, transform ``k`` of the chain draws
from its own CPU generator seeded by ``(seed, ids[b], epoch[b], stream, k)``: first whether it applies
(uniform < p), then its parameters in their listed order, then its random signal (noise, room response).
So a row's result depends on those numbers and its audio only (babble also on the other rows' audio),
not on the batch it is in, its position, or the device; resumed runs see the same views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from speechcl.audio.augment import functional as AF

_MASK64 = (1 << 64) - 1


def row_seed(*values: int) -> int:
    """A 64-bit seed mixing integers (splitmix64 over each value): ``row_seed(seed, item, epoch, stream, k)``."""
    h = 0
    for v in values:
        h = ((h ^ (int(v) & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


# --- parameters ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One transform parameter: its default (in the config's notation), kind and allowed closed range."""

    default: Any
    kind: str = "float"  # "float", "int" or "str"
    low: float = -math.inf
    high: float = math.inf
    choices: tuple[str, ...] = ()
    doc: str = ""


class _Sampler:
    """Draws one value of a parameter from a generator (fixed, uniform range or choice)."""

    def __init__(self, kind: str, fixed: Any = None, lo: float = 0.0, hi: float = 0.0,
                 choices: Sequence[Any] = ()) -> None:
        self.kind, self.fixed, self.lo, self.hi, self.choices = kind, fixed, lo, hi, tuple(choices)

    def draw(self, gen: torch.Generator) -> Any:
        if self.kind == "fixed":
            return self.fixed
        if self.kind == "choice":
            return self.choices[int(torch.randint(len(self.choices), (), generator=gen))]
        if self.kind == "int":
            return int(torch.randint(int(self.lo), int(self.hi) + 1, (), generator=gen))
        return self.lo + (self.hi - self.lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _parse(value: Any, param: Param, where: str) -> _Sampler:
    """The sampler for a config value of ``param`` (ValueError naming ``where`` on a bad value)."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{where}: {why}, got {value!r}")

    def check(v: Any) -> Any:
        if param.kind == "str":
            if not isinstance(v, str) or v not in param.choices:
                raise bad(f"values must be one of {list(param.choices)}")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(f"values must be {'integers' if param.kind == 'int' else 'numbers'}")
        if param.kind == "int" and int(v) != v:
            raise bad("values must be integers")
        if not param.low <= v <= param.high:
            raise bad(f"values must lie in [{param.low}, {param.high}]")
        return int(v) if param.kind == "int" else float(v)

    if isinstance(value, Mapping):
        if set(value) != {"choice"} or isinstance(value["choice"], str) or not isinstance(value["choice"], Sequence):
            raise bad("a mapping value must be {choice: [values...]}")
        values = [check(v) for v in value["choice"]]
        if not values:
            raise bad("choice needs at least one value")
        return _Sampler("choice", choices=values)
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = [check(v) for v in value]
        if param.kind == "str" or len(values) >= 3:
            if not values:
                raise bad("choice needs at least one value")
            return _Sampler("choice", choices=values)
        if len(values) != 2:
            raise bad("a list must be [lo, hi] (a range) or 3+ values (a choice)")
        if values[0] > values[1]:
            raise bad("a range [lo, hi] needs lo <= hi")
        return _Sampler("int" if param.kind == "int" else "float", lo=values[0], hi=values[1])
    return _Sampler("fixed", fixed=check(value))


# --- transforms ----------------------------------------------------------------------------------------------

Draw = dict[str, Any]


class Transform:
    """One named augmentation: its pure ``function`` (see functional.py), its parameters, how one item's
    strength is drawn (``draw``), how the drawn rows of a batch are transformed (``apply``) and the time map
    of a drawn strength (``time_map``: output sample = scale * input sample + offset)."""

    def __init__(self, name: str, function: Callable[..., Any], params: dict[str, Param], doc: str) -> None:
        self.name, self.function, self.params, self.doc = name, function, params, doc

    def draw(self, samplers: Mapping[str, _Sampler], gen: torch.Generator, sample_rate: int) -> Draw:
        return {key: samplers[key].draw(gen) for key in self.params}

    def apply(self, x: Tensor, lens: Tensor, rows: list[int], draws: list[Draw], gens: list[torch.Generator],
              sample_rate: int) -> tuple[Tensor, Tensor]:
        """x ``[B, S]`` float32 (modified in place or replaced), lens ``[B]`` int64 CPU; rows drawn to apply."""
        raise NotImplementedError

    def time_map(self, draw: Draw, sample_rate: int) -> tuple[float, float]:
        return 1.0, 0.0


def _rows_values(x: Tensor, draws: list[Draw], key: str) -> Tensor:
    return torch.tensor([d[key] for d in draws], dtype=x.dtype, device=x.device)


def _groups(rows: list[int], draws: list[Draw], key: Callable[[Draw], Any]) -> dict[Any, list[int]]:
    """Positions in ``rows`` grouped by a key of their draw (rows sharing one strength run together)."""
    out: dict[Any, list[int]] = {}
    for i, d in enumerate(draws):
        out.setdefault(key(d), []).append(i)
    return out


class _Gain(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        idx = torch.tensor(rows, device=x.device)
        x[idx] = AF.apply_gain(x[idx], _rows_values(x, draws, "db"))
        return x, lens


class _Polarity(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        idx = torch.tensor(rows, device=x.device)
        x[idx] = AF.invert_polarity(x[idx])
        return x, lens


class _Clip(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        idx = torch.tensor(rows, device=x.device)
        x[idx] = AF.clip(x[idx], _rows_values(x, draws, "level"), lens[rows])
        return x, lens


class _MuLaw(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        for bits, pos in _groups(rows, draws, lambda d: d["bits"]).items():
            sub = [rows[i] for i in pos]
            idx = torch.tensor(sub, device=x.device)
            x[idx] = AF.mu_law(x[idx], bits, lens[sub])
        return x, lens


def _shift_samples(draw: Draw, sample_rate: int) -> int:
    return round(draw["shift_ms"] * sample_rate / 1000)


class _Shift(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        idx = torch.tensor(rows, device=x.device)
        shifts = torch.tensor([_shift_samples(d, sample_rate) for d in draws], device=x.device)
        x[idx] = AF.time_shift(x[idx], shifts, lens[rows])
        return x, lens

    def time_map(self, draw, sample_rate):
        return 1.0, float(_shift_samples(draw, sample_rate))


class _TimeMask(Transform):
    def draw(self, samplers, gen, sample_rate):
        count = samplers["count"].draw(gen)
        widths = [samplers["width_ms"].draw(gen) for _ in range(count)]
        starts = torch.rand(count, generator=gen, dtype=torch.float64).tolist()
        return {"count": count, "width_ms": widths, "start_fraction": starts}

    def apply(self, x, lens, rows, draws, gens, sample_rate):
        most = max(d["count"] for d in draws)
        if most == 0:
            return x, lens
        starts = torch.zeros(len(rows), most, dtype=torch.long)
        widths = torch.zeros(len(rows), most, dtype=torch.long)
        for i, (b, d) in enumerate(zip(rows, draws)):
            n = int(lens[b])
            for m, (w_ms, u) in enumerate(zip(d["width_ms"], d["start_fraction"])):
                w = min(round(w_ms * sample_rate / 1000), n)
                widths[i, m], starts[i, m] = w, int(u * (n - w + 1))
        idx = torch.tensor(rows, device=x.device)
        x[idx] = AF.time_mask(x[idx], starts, widths)
        return x, lens


def _resize(x: Tensor, width: int) -> Tensor:
    return x[:, :width] if x.shape[1] >= width else torch.nn.functional.pad(x, (0, width - x.shape[1]))


class _Speed(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        lens = lens.clone()
        outs = []
        for ratio, pos in _groups(rows, draws, lambda d: AF.speed_ratio(d["factor"], sample_rate)).items():
            sub = [rows[i] for i in pos]
            width = int(lens[sub].max())
            out, new = AF.speed_perturb(x[sub, :width], ratio, sample_rate, lens[sub])
            outs.append((sub, out))
            lens[sub] = new.cpu()
        x = _resize(x, int(lens.max()) if len(lens) else 0)
        for sub, out in outs:
            x[torch.tensor(sub, device=x.device)] = _resize(out, x.shape[1])
        return x, lens

    def time_map(self, draw, sample_rate):
        return 1.0 / AF.speed_ratio(draw["factor"], sample_rate), 0.0


class _Pitch(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        for b, d in zip(rows, draws):
            n = int(lens[b])
            x[b, :n] = AF.pitch_shift(x[b:b + 1, :n], d["semitones"], sample_rate)[0]
        return x, lens


class _Reverb(Transform):
    # Row by row on the valid slice: the FFT size then depends on the row alone, so a row's result does not
    # depend on the batch it is in (a batched FFT differs by ~1e-7, which a later quantizer would amplify).
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        for b, d, g in zip(rows, draws, gens):
            n = int(lens[b])
            rir = AF.synthetic_rir(d["rt60"], sample_rate, d["drr_db"], g).to(x.device)
            x[b, :n] = AF.reverberate(x[b:b + 1, :n], rir)[0]
        return x, lens


class _BandLimit(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):  # row by row, as _Reverb
        for b, d in zip(rows, draws):
            n = int(lens[b])
            x[b, :n] = AF.band_limit(x[b:b + 1, :n], d["low_hz"], d["high_hz"], sample_rate)[0]
        return x, lens


class _Noise(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        idx = torch.tensor(rows, device=x.device)
        noise = torch.zeros(len(rows), x.shape[1])
        for i, (b, d, g) in enumerate(zip(rows, draws, gens)):
            noise[i, :int(lens[b])] = AF.colored_noise(int(lens[b]), d["color"], g)
        x[idx] = AF.mix_at_snr(x[idx], noise.to(x.device), _rows_values(x, draws, "snr_db"), lens[rows])
        return x, lens


class _Babble(Transform):
    def apply(self, x, lens, rows, draws, gens, sample_rate):
        B = x.shape[0]
        if B < 2:
            return x, lens
        sources: list[list[int]] = [[] for _ in range(B)]
        for b, d, g in zip(rows, draws, gens):
            picks = torch.randperm(B - 1, generator=g).tolist()[:d["speakers"]]
            sources[b] = [j + (j >= b) for j in picks]
        babble = AF.babble_noise(x, sources, lens)
        idx = torch.tensor(rows, device=x.device)
        x[idx] = AF.mix_at_snr(x[idx], babble[idx], _rows_values(x, draws, "snr_db"), lens[rows])
        return x, lens


_SNR = Param([5.0, 20.0], doc="signal-to-noise ratio in dB over the valid samples")

TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    _Noise("noise", AF.add_noise, {
        "snr_db": _SNR,
        "color": Param("white", "str", choices=tuple(AF.NOISE_COLORS), doc="PSD ~ 1/f^beta: white 0, pink 1, "
                       "brown 2, blue -1, violet -2")}, "additive Gaussian noise at a target SNR"),
    _Babble("babble", AF.add_babble, {
        "snr_db": _SNR,
        "speakers": Param(3, "int", 1, 64, doc="other rows of the batch summed (fewer if the batch is smaller)")},
        "babble: other utterances of the batch at a target SNR (no-op on a batch of one)"),
    _Gain("gain", AF.apply_gain, {"db": Param([-6.0, 6.0], doc="gain in dB")}, "gain"),
    _Polarity("polarity", AF.invert_polarity, {}, "sign inversion"),
    _Shift("time_shift", AF.time_shift, {
        "shift_ms": Param([-50.0, 50.0], doc="delay in ms (negative: advance); zero filled, length kept")},
        "time shift"),
    _Speed("speed", AF.speed_perturb, {
        "factor": Param([0.9, 1.0, 1.1], low=0.5, high=2.0, doc="speed factor (>1 faster, shorter); Kaldi's "
                        "0.9/1.0/1.1; rounded to 1%")}, "speed perturbation by resampling (changes length)"),
    _Pitch("pitch", AF.pitch_shift, {
        "semitones": Param([-2.0, 2.0], low=-12.0, high=12.0, doc="pitch shift; ratio rounded to 1%")},
        "pitch shift keeping duration"),
    _Reverb("reverb", AF.reverberate, {
        "rt60": Param([0.2, 0.8], low=0.05, high=3.0, doc="reverberation time in seconds"),
        "drr_db": Param([0.0, 10.0], low=-20.0, high=40.0, doc="direct-to-reverberant energy ratio in dB")},
        "reverberation with a synthetic exponentially decaying room impulse response"),
    _BandLimit("band_limit", AF.band_limit, {
        "low_hz": Param(300.0, low=0.0, high=8000.0, doc="lower band edge (0: low-pass)"),
        "high_hz": Param(3400.0, low=1.0, high=96000.0, doc="upper band edge")},
        "band-limiting FIR (default: the 300-3400 Hz telephone band)"),
    _Clip("clip", AF.clip, {"level": Param([0.3, 1.0], low=1e-3, high=1.0, doc="clip level as a fraction of the "
                                                                                  "row's peak")}, "hard clipping"),
    _MuLaw("mu_law", AF.mu_law, {"bits": Param(8, "int", 1, 16, doc="2**bits quantization levels")},
           "mu-law quantization"),
    _TimeMask("time_mask", AF.time_mask, {
        "count": Param(2, "int", 0, 100, doc="spans zeroed per item"),
        "width_ms": Param([0.0, 50.0], low=0.0, high=10000.0, doc="width of each span in ms (drawn per span)")},
        "waveform time masking"),
)}


def describe() -> str:
    """One line per transform and parameter, with defaults (for error messages and docs)."""
    lines = []
    for t in TRANSFORMS.values():
        lines.append(f"{t.name}: {t.doc}")
        lines += [f"  {k} [{p.default}]: {p.doc}" for k, p in t.params.items()]
    return "\n".join(lines)


def time_map(name: str, sample_rate: int = 16000, **params: Any) -> tuple[float, float]:
    """``(scale, offset)`` with output sample ≈ ``scale * input sample + offset`` for transform ``name`` at
    fixed strength ``params`` (scalars; missing ones take fixed defaults): speed ``(1/factor, 0)``, time_shift
    ``(1, shift)``, every other transform ``(1, 0)``."""
    transform = _transform(name, 0)
    unknown = sorted(set(params) - set(transform.params))
    if unknown:
        raise ValueError(f"augment transform {name!r}: unknown key(s) {unknown}; valid keys are "
                         f"{sorted(transform.params)}")
    draw = {}
    for key, param in transform.params.items():
        value = params.get(key, param.default)
        sampler = _parse(value, param, f"augment transform {name!r} key {key!r}")
        if sampler.kind != "fixed":
            raise ValueError(f"time_map({name!r}): {key} must be one fixed value, got {value!r}")
        draw[key] = sampler.fixed
    return transform.time_map(draw, sample_rate)


def _transform(name: Any, index: int) -> Transform:
    if name not in TRANSFORMS:
        raise ValueError(f"augment transform {index}: unknown name {name!r}; valid names are {sorted(TRANSFORMS)}")
    return TRANSFORMS[name]


# --- the chain -----------------------------------------------------------------------------------------------

@dataclass
class AugmentConfig:
    """The ``augment`` config section: ``transforms`` (mappings ``{name, p, **params}``, applied in order; see
    the module docstring) and ``seed`` (mixed with item id, epoch and view stream)."""

    transforms: tuple = ()
    seed: int = 0


@dataclass(frozen=True)
class _Step:
    transform: Transform
    p: float
    samplers: dict[str, _Sampler]


def _step(spec: Any, index: int) -> _Step:
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"augment transform {index} must be a mapping with a 'name' (one of {sorted(TRANSFORMS)}), "
                         f"got {spec!r}")
    transform = _transform(spec["name"], index)
    where = f"augment transform {index} ({transform.name})"
    valid = ["p", *transform.params]
    for key in spec:
        if key != "name" and key not in valid:
            raise ValueError(f"{where}: unknown key {key!r}; valid keys are {valid}")
    p = spec.get("p", 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{where}: p must be a probability in [0, 1], got {p!r}")
    samplers = {key: _parse(spec.get(key, param.default), param, f"{where} key {key!r}")
                for key, param in transform.params.items()}
    return _Step(transform, float(p), samplers)


class Augmenter:
    """Applies an :class:`AugmentConfig` chain to padded batches (see the module docstring).

    Args:
        cfg: the config, a plain ``{"transforms": [...], "seed": s}`` mapping, or the transforms list alone
            (seed 0).
        sample_rate: of the waves (16 kHz in speechcl).
    """

    def __init__(self, cfg: AugmentConfig | Mapping[str, Any] | Sequence[Mapping[str, Any]],
                 sample_rate: int = 16000) -> None:
        if isinstance(cfg, Mapping):
            unknown = sorted(set(cfg) - {"transforms", "seed"})
            if unknown:
                raise ValueError(f"augment: unknown keys {unknown}; valid keys are ['seed', 'transforms']")
            cfg = AugmentConfig(tuple(cfg.get("transforms") or ()), int(cfg.get("seed", 0)))
        elif not isinstance(cfg, AugmentConfig):
            if isinstance(cfg, str) or not isinstance(cfg, Sequence):
                raise ValueError(f"augment: expected an AugmentConfig or a list of transforms, got {cfg!r}")
            cfg = AugmentConfig(tuple(cfg))
        if isinstance(cfg.transforms, (str, Mapping)) or not isinstance(cfg.transforms, Sequence):
            raise ValueError(f"augment.transforms must be a list of mappings, got {cfg.transforms!r}")
        if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
            raise ValueError(f"augment.seed must be an integer, got {cfg.seed!r}")
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"augment: sample_rate must be a positive integer, got {sample_rate!r}")
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.steps = [_step(spec, i) for i, spec in enumerate(cfg.transforms)]

    @property
    def identity(self) -> bool:
        """True when no transform can apply (none configured, or every p is 0): calls return their inputs."""
        return all(step.p == 0.0 for step in self.steps)

    def __repr__(self) -> str:
        chain = ", ".join(f"{s.transform.name}(p={s.p})" for s in self.steps)
        return f"Augmenter([{chain}], seed={self.cfg.seed})"

    def _draws(self, ids: Tensor, epoch: int | Tensor, stream: int
               ) -> list[tuple[_Step, list[int], list[Draw], list[torch.Generator]]]:
        """For each step: the rows it applies to, their drawn strengths and their generators (positioned for
        the step's random signal)."""
        ids_list = torch.as_tensor(ids).reshape(-1).tolist()
        epochs = torch.as_tensor(epoch).reshape(-1).tolist()
        if len(epochs) == 1:
            epochs = epochs * len(ids_list)
        if len(epochs) != len(ids_list):
            raise ValueError(f"augment: epoch must be an int or [B={len(ids_list)}], got {len(epochs)} values")
        plan = []
        for k, step in enumerate(self.steps):
            if step.p == 0.0:
                continue
            rows, draws, gens = [], [], []
            for b, (item, ep) in enumerate(zip(ids_list, epochs)):
                gen = torch.Generator().manual_seed(row_seed(self.cfg.seed, item, ep, stream, k))
                if float(torch.rand((), generator=gen, dtype=torch.float64)) >= step.p:
                    continue
                rows.append(b)
                draws.append(step.transform.draw(step.samplers, gen, self.sample_rate))
                gens.append(gen)
            if rows:
                plan.append((step, rows, draws, gens))
        return plan

    def __call__(self, wave: Tensor, padding_mask: Tensor | None, ids: Tensor, epoch: int | Tensor,
                 stream: int = 0) -> tuple[Tensor, Tensor | None]:
        """Augment a batch.

        Args:
            wave: ``[B, S]`` float, any device.
            padding_mask: ``[B, S]`` bool, True at padding, or None (no padding).
            ids: ``[B]`` int64 stable item ids (the dataset's ``batch["id"]``).
            epoch: int or ``[B]`` int64 (``batch["epoch"]``).
            stream: the view (0, 1, ...): independent draws for the same item and epoch.

        Returns:
            ``(wave [B, S'], padding_mask [B, S'] or None)`` on wave's device and dtype; ``S' != S`` only when
            speed perturbation changes lengths (rows keep their whole content). The mask is None only when
            it was None and every row still fills ``S'``. Padding is zero. An identity chain returns the
            inputs themselves.
        """
        if self.identity:
            return wave, padding_mask
        if wave.dim() != 2 or not wave.is_floating_point():
            raise ValueError(f"augment: wave must be a float tensor [B, S], got {wave.dtype} {tuple(wave.shape)}")
        B, S = wave.shape
        if padding_mask is not None and padding_mask.shape != wave.shape:
            raise ValueError(f"augment: padding_mask {tuple(padding_mask.shape)} must match wave {tuple(wave.shape)}")
        if torch.as_tensor(ids).numel() != B:
            raise ValueError(f"augment: ids must be [B={B}], got {tuple(torch.as_tensor(ids).shape)}")
        lens = (torch.full((B,), S, dtype=torch.long) if padding_mask is None
                else (~padding_mask).sum(dim=1).cpu().long())
        x = wave.to(torch.float32, copy=True)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask, 0.0)
        for step, rows, draws, gens in self._draws(ids, epoch, stream):
            x, lens = step.transform.apply(x, lens, rows, draws, gens, self.sample_rate)
        width = x.shape[1]
        valid = AF.valid_mask(lens.to(x.device), width)
        out = (x * valid).to(wave.dtype)
        if padding_mask is None and bool((lens == width).all()):
            return out, None
        return out, ~valid

    def time_maps(self, ids: Tensor, epoch: int | Tensor, stream: int = 0) -> tuple[Tensor, Tensor]:
        """``(scale [B], offset [B])`` float64: where the chain moves each row's input sample t, as
        ``scale * t + offset`` (speed and time shift composed in order), for frame-aligned comparisons of
        views; the draws are the ones ``__call__`` makes for the same arguments."""
        n = torch.as_tensor(ids).numel()
        scale, offset = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for step, rows, draws, _ in self._draws(ids, epoch, stream):
            for b, d in zip(rows, draws):
                s, o = step.transform.time_map(d, self.sample_rate)
                scale[b], offset[b] = s * scale[b], s * offset[b] + o
        return scale, offset
