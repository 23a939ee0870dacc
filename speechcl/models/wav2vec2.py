"""The wav2vec 2.0 model: encoder (shared by pretraining and CTC), pretraining model, CTC model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechcl.models.config import Wav2Vec2Config
from speechcl.models.context import ContextNetwork
from speechcl.models.feature_encoder import FeatureEncoder, GradMultiply
from speechcl.models.masking import compute_channel_mask, compute_span_mask
from speechcl.models.quantizer import GumbelVectorQuantizer, QuantizerOutput


@dataclass
class EncoderOutput:
    """What the encoder returns (``B`` batch, ``T`` frames, ``C`` conv channels, ``D`` model width)."""

    x: Tensor  # [B, T, D] context network output
    features: Tensor  # [B, T, C] normalised encoder features (after dropout_features): the quantizer's input
    features_pen: Tensor  # scalar: mean of squared raw conv features (fairseq's feature penalty)
    padding_mask: Tensor | None  # [B, T] bool, True at padded frames (None when nothing is padded)
    mask_indices: Tensor | None  # [B, T] bool, True at masked (time) steps
    hidden_states: list[Tensor]  # with return_hidden: input to layer 1, then one per layer, each [B, T, D]

    @property
    def lengths(self) -> Tensor:
        """``[B]`` int64 valid (unpadded) frames."""
        b, t = self.x.shape[:2]
        if self.padding_mask is None:
            return torch.full((b,), t, dtype=torch.int64, device=self.x.device)
        return (~self.padding_mask).sum(1)


@dataclass
class FeaturesOutput:
    """``extract_features`` result: hidden states in transformers' order and valid frames per row."""

    hidden_states: list[Tensor]  # L + 1 tensors [B, T, D]
    lengths: Tensor  # [B] int64 valid frames
    last_hidden_state: Tensor  # [B, T, D] the encoder output (after the final LayerNorm in pre-LN models)


class Wav2Vec2Encoder(nn.Module):
    """Waveform → contextual representations: feature encoder, LayerNorm, projection, masking, transformer.

    Parameter names follow fairseq (``feature_extractor``, ``layer_norm``, ``post_extract_proj``,
    ``mask_emb``, ``encoder``) so checkpoints map one-to-one. ``causal`` (an attribute, not saved: the objective
    that trains the encoder sets it when it is built, so :func:`speechcl.load_model` restores it) makes every
    call without an explicit ``causal=`` run the context network causally, extraction included.
    """

    causal: bool

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.causal = False
        self.feature_extractor = FeatureEncoder(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
        c = cfg.conv_out_dim
        self.layer_norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.post_extract_proj = nn.Linear(c, cfg.encoder_embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = ContextNetwork(
            dim=cfg.encoder_embed_dim, ffn_dim=cfg.encoder_ffn_embed_dim, heads=cfg.encoder_attention_heads,
            layers=cfg.encoder_layers, conv_pos=cfg.conv_pos, conv_pos_groups=cfg.conv_pos_groups,
            dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout, layerdrop=cfg.layerdrop,
            layer_norm_first=cfg.layer_norm_first, eps=cfg.layer_norm_eps,
        )
        self.feature_grad_mult = cfg.feature_grad_mult

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames for ``lengths [B]`` samples."""
        return self.feature_extractor.output_lengths(lengths)

    def frame_padding_mask(self, padding_mask: Tensor | None, num_frames: int) -> Tensor | None:
        """Sample-level ``padding_mask [B, S]`` (True = padded) → frame-level ``[B, T]`` (None if none padded)."""
        if padding_mask is None:
            return None
        lengths = (~padding_mask).sum(1)
        frames = self.output_lengths(lengths)
        mask = torch.arange(num_frames, device=padding_mask.device)[None, :] >= frames[:, None]
        return mask if bool(mask.any()) else None

    def forward(
        self,
        wav: Tensor,
        padding_mask: Tensor | None = None,
        *,
        mask: bool = False,
        mask_indices: Tensor | None = None,
        channel_mask: bool = False,
        return_hidden: bool = False,
        causal: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """Encode ``wav [B, S]`` (16 kHz, float); ``padding_mask [B, S]`` bool, True at padded samples.

        Args:
            mask: sample a span mask with the config's mask_prob/mask_length (pretraining, fine-tuning).
            mask_indices: ``[B, T]`` bool, an explicit time mask (overrides ``mask``).
            channel_mask: apply channel masking with mask_channel_prob/length (fine-tuning, training only).
            return_hidden: collect hidden states (see :class:`EncoderOutput`).
            causal: the context network sees no future frames (see :class:`ContextNetwork`); ``None``: the
                encoder's :attr:`causal` (False unless a causal objective such as CPC built it).
            generator: RNG for masks, layerdrop (must live on ``wav``'s device).
        """
        if wav.dim() != 2:
            raise ValueError(f"expected wav of shape [batch, samples], got {tuple(wav.shape)}")
        if padding_mask is not None and padding_mask.shape != wav.shape:
            raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} != wav shape {tuple(wav.shape)}")
        cfg = self.cfg
        # Valid samples per row: the group norm's statistics skip padding (a row comes out as if alone).
        sample_lengths = None if padding_mask is None else (~padding_mask).sum(1).tolist()
        if self.feature_grad_mult > 0:
            feats = self.feature_extractor(wav, sample_lengths)
            if self.feature_grad_mult != 1.0:
                feats = GradMultiply.apply(feats, self.feature_grad_mult)
        else:
            with torch.no_grad():
                feats = self.feature_extractor(wav, sample_lengths)
        features_pen = feats.float().pow(2).mean()
        feats = self.layer_norm(feats)  # [B, T, C]
        b, t, _ = feats.shape
        frame_pad = self.frame_padding_mask(padding_mask, t)
        unmasked = self.dropout_features(feats)
        x = self.dropout_input(self.post_extract_proj(feats))

        if mask_indices is None and mask and cfg.mask_prob > 0:
            lengths = None if frame_pad is None else (~frame_pad).sum(1)
            mask_indices = compute_span_mask(
                (b, t), cfg.mask_prob, cfg.mask_length, lengths=lengths, min_masks=cfg.mask_min_masks,
                require_same_masks=cfg.require_same_masks, generator=generator, device=x.device,
            )
        if mask_indices is not None:
            if mask_indices.shape != (b, t):
                raise ValueError(f"mask_indices must have shape [{b}, {t}], got {tuple(mask_indices.shape)}")
            x = torch.where(mask_indices[..., None], self.mask_emb.to(x.dtype), x)
        if channel_mask and self.training and cfg.mask_channel_prob > 0:
            ch = compute_channel_mask(
                b, x.shape[-1], cfg.mask_channel_prob, cfg.mask_channel_length,
                min_masks=cfg.mask_channel_min_masks, generator=generator, device=x.device,
            )
            x = x.masked_fill(ch[:, None, :], 0.0)

        causal = self.causal if causal is None else causal
        x, hidden = self.encoder(x, frame_pad, return_hidden=return_hidden, causal=causal, generator=generator)
        return EncoderOutput(x=x, features=unmasked, features_pen=features_pen, padding_mask=frame_pad,
                             mask_indices=mask_indices, hidden_states=hidden)

    @torch.no_grad()
    def extract_features(self, wav: Tensor, padding_mask: Tensor | None = None) -> FeaturesOutput:
        """Hidden states for ``wav [B, S]`` at 16 kHz without masking or dropout-dependent noise.

        Returns hidden states in transformers' ``output_hidden_states`` order (index 0 = input to the first
        transformer layer, then each layer's output; each ``[B, T, D]``), ``lengths [B]`` valid frames and
        the final output. In pre-LN models the last hidden state precedes the final LayerNorm (as in
        transformers v5); ``last_hidden_state`` is the normalised output.
        The module's train/eval mode is respected; call ``.eval()`` for deterministic features.
        """
        out = self(wav, padding_mask, return_hidden=True)
        return FeaturesOutput(hidden_states=out.hidden_states, lengths=out.lengths, last_hidden_state=out.x)


@dataclass
class PretrainingOutput:
    """Forward result of :class:`Wav2Vec2ForPretraining` (``N`` masked steps, ``K`` distractors)."""

    logits: Tensor  # [N, 1 + K] float32 cosine similarity / logit_temp; column 0 is the positive
    quantized: QuantizerOutput  # over the N masked steps
    features_pen: Tensor  # scalar
    mask_indices: Tensor  # [B, T] bool
    negative_indices: Tensor  # [N, K] indices into the N masked steps (row-major over batch, time)
    num_codevectors: int  # G * V


class Wav2Vec2ForPretraining(nn.Module):
    """Encoder + quantizer + projection heads; the contrastive logits of wav2vec 2.0 pretraining.

    Only masked steps are quantized and predicted (as fairseq): targets ``q = project_q(Q(z_t))`` and
    predictions ``c = final_proj(x_t)`` for masked ``t``; distractors are other masked steps.
    """

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Wav2Vec2Encoder(cfg)
        self.quantizer = GumbelVectorQuantizer(
            cfg.conv_out_dim, cfg.latent_vars, cfg.latent_groups, cfg.codevector_dim, cfg.latent_temp
        )
        self.project_q = nn.Linear(cfg.codevector_dim, cfg.final_dim)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.final_dim)

    def set_num_updates(self, num_updates: int) -> None:
        self.quantizer.set_num_updates(num_updates)

    def extract_features(self, wav: Tensor, padding_mask: Tensor | None = None) -> FeaturesOutput:
        return self.encoder.extract_features(wav, padding_mask)

    def forward(
        self,
        wav: Tensor,
        padding_mask: Tensor | None = None,
        *,
        mask_indices: Tensor | None = None,
        negative_indices: Tensor | None = None,
        gumbel: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainingOutput:
        """Contrastive logits for ``wav [B, S]``; ``padding_mask [B, S]`` True at padded samples.

        ``mask_indices [B, T]``, ``negative_indices [N, K]`` and ``gumbel [N*G, V]`` noise may be given
        explicitly (tests, reproductions); otherwise they are drawn from ``generator``.
        """
        from speechcl.objectives.contrastive import contrastive_logits, sample_negatives

        cfg = self.cfg
        enc = self.encoder(wav, padding_mask, mask=True, mask_indices=mask_indices, generator=generator)
        if enc.mask_indices is None or not bool(enc.mask_indices.any()):
            raise ValueError("pretraining needs masked steps: mask_prob is 0 or the utterances are too short")
        m = enc.mask_indices
        q = self.quantizer(enc.features[m], generator=generator, noise=gumbel)
        targets = self.project_q(q.codevectors)  # [N, F]
        preds = self.final_proj(enc.x[m])  # [N, F]
        if negative_indices is None:
            negative_indices = sample_negatives(m, cfg.num_negatives, cfg.cross_sample_negatives, generator=generator)
        logits = contrastive_logits(preds, targets, negative_indices, cfg.logit_temp)
        return PretrainingOutput(logits=logits, quantized=q, features_pen=enc.features_pen, mask_indices=m,
                                 negative_indices=negative_indices,
                                 num_codevectors=cfg.latent_groups * cfg.latent_vars)


class Wav2Vec2ForCTC(nn.Module):
    """Encoder + dropout + linear head over the letter vocabulary (index 0 is the CTC blank)."""

    def __init__(self, cfg: Wav2Vec2Config, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (blank + one symbol), got {vocab_size}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.encoder = Wav2Vec2Encoder(cfg)
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.head = nn.Linear(cfg.encoder_embed_dim, vocab_size)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def extract_features(self, wav: Tensor, padding_mask: Tensor | None = None) -> FeaturesOutput:
        return self.encoder.extract_features(wav, padding_mask)

    def forward(self, wav: Tensor, padding_mask: Tensor | None = None, *, generator: torch.Generator | None = None,
                freeze_encoder: bool = False) -> tuple[Tensor, Tensor]:
        """Logits ``[B, T, vocab]`` and valid frames ``[B]``; time/channel masking in training mode.

        ``freeze_encoder`` runs the encoder without gradients (fairseq's ``freeze_finetune_updates``: only
        the head trains).
        """
        with torch.no_grad() if freeze_encoder else contextlib.nullcontext():
            enc = self.encoder(wav, padding_mask, mask=self.training, channel_mask=self.training,
                               generator=generator)
        return self.head(self.final_dropout(enc.x)), enc.lengths


def encoder_of(model: nn.Module) -> Wav2Vec2Encoder:
    """The :class:`Wav2Vec2Encoder` of a speechcl model: the ``encoder`` of a pretraining, CTC or method model
    (every pretraining objective keeps its shared encoder there), or the encoder itself."""
    if isinstance(model, Wav2Vec2Encoder):
        return model
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, Wav2Vec2Encoder):
        return encoder
    raise ValueError(f"a {type(model).__name__} has no speechcl encoder; expected a speechcl model (pretraining, CTC, an objective's model or a bare encoder)")
