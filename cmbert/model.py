"""CM-BERT: BERT + masked multimodal attention (Yang, Xu & Gao, ACM MM 2020), regression of sentiment in [-3, 3].

Reads top to bottom: the config, the masked multimodal attention (paper eq. 1-8), the full model, then
building the encoder (pretrained weights or a bare config). Shapes: B batch, T word-pieces, H the encoder's
hidden size (never hard-coded), Da the audio feature size, D the projection size (``proj_dim``).

Where the paper and the authors' code (github.com/thuiar/Cross-Modal-BERT, model.py ``BertFinetun``) differ,
the comment at the spot says which one this file follows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from cmbert.encoders import DEFAULT_ENCODER, MINILM, MPNET, resolve_encoder  # noqa: F401 (re-exported)


TEXT_ONLY = "none"  # the fusion of a text-only model (T-BERT: no audio at all)
FUSIONS = ("cmbert", TEXT_ONLY)


@dataclass
class CMBertConfig:
    encoder: str = DEFAULT_ENCODER  # "mpnet", "minilm" (cmbert/encoders.py), a model directory or an offline hub id
    # The encoder's own config as a dict (transformers ``to_dict()``). Set -> the encoder is built from it
    # (random weights, e.g. tiny test models, or weights that a checkpoint then loads); None -> pretrained weights.
    encoder_config: dict | None = None
    fusion: str = "cmbert"  # cmbert | none (none = T-BERT: the encoder's [CLS] -> linear)
    # The defaults are the shipped model, our hearing variant; the paper's CM-BERT is ``PAPER`` (below):
    # cls_audio="zero", audio_values=False (and a fusion lr of 0.01, cmbert/training.py).
    cls_audio: str = "mean"  # zero: paper, audio cannot reach the score | mean: mean word audio at [CLS]
    # Ours, off in the paper: the attention's values carry the audio too, X_att = W_m (X_t + A V_a), so the
    # voice reaches [CLS] as content, not only as attention weights over text vectors. V_a starts at zero:
    # an untrained model is exactly the paper's.
    audio_values: bool = True
    # 0: V_a is one bias-free linear map (Da -> H). N > 0: a bias-free MLP, Da -> N -> GELU -> H (GELU(0) = 0, so
    # zero audio still adds exactly 0); its last layer starts at zero, so an untrained model is still the paper's.
    audio_value_hidden: int = 0
    # Ours: a bias-free linear map from the [CLS] audio vector (the standardised mean word audio) straight to the
    # score, beside the head: the linear probe of the word features inside the model. Zero at the start and for
    # zero audio (text-only rows; the paper's cls_audio="zero"), so it changes neither MOSI nor paper mode.
    # On by default since 2026-12-06 (RAVDESS dev, 5 paired seeds: README); checkpoints saved before have none.
    audio_direct: bool = True
    audio_dim: int = 25  # Da; eGeMAPSv02 LLDs are 25. Set from the data by the training job.
    proj_dim: int = 30  # D: both modalities are projected to 30 in the authors' code
    text_kernel: int = 1  # Conv1D kernel sizes (odd). >1 lets neighbouring audio leak into [CLS].
    audio_kernel: int = 1
    proj_bias: bool = False  # a bias on the audio projection would also make [CLS] audio non-zero
    dropout: float = 0.1  # after the fusion's linear layer and before the regression head
    attention_dropout: float = 0.3  # on W_m (authors' code: nn.Dropout(0.3))
    max_len: int = 50  # word-pieces including [CLS] and [SEP]
    mask_value: float = -10000.0  # what padded keys get before the softmax (authors: -10000, added)
    freeze_embeddings: bool = True  # paper: the embedding layer is frozen
    # Per-feature mean and std of the training set's word audio (set by the training job). Raw LLDs span
    # 0.1 (loudness) to 1000s (formant Hz): unscaled, the largest dominate the audio projection.
    audio_mean: list[float] | None = None
    audio_std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if self.cls_audio not in ("zero", "mean"):
            raise ValueError(f"cls_audio must be 'zero' or 'mean', not {self.cls_audio!r}")
        if self.audio_value_hidden < 0:
            raise ValueError("audio_value_hidden must be 0 (linear V_a) or a hidden size")
        if self.text_kernel % 2 == 0 or self.audio_kernel % 2 == 0:
            raise ValueError("text_kernel and audio_kernel must be odd (same-length convolution)")
        if self.audio_dim < 1:
            raise ValueError("audio_dim must be >= 1 (text-only data uses 1 channel of zeros)")
        for name in ("audio_mean", "audio_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.audio_dim:
                raise ValueError(f"{name} has {len(value)} values, audio_dim is {self.audio_dim}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CMBertConfig":
        known = {f.name for f in fields(cls)}
        return cls(**(SAVED_BEFORE | {k: v for k, v in data.items() if k in known}))


# Fields added with a default that a config saved before them did not have: what such a checkpoint was trained with.
SAVED_BEFORE = {"audio_direct": False}


PAPER = {"cls_audio": "zero", "audio_values": False}  # CMBertConfig(**PAPER): the paper's model, deaf at [CLS]


@dataclass
class CMBertOutput:
    score: torch.Tensor  # (B,) sentiment, unbounded regression output (labels live in [-3, 3])
    alpha_t: torch.Tensor | None = None  # (B, T, T) text attention, ReLU(Q_t K_t^T)
    beta_a: torch.Tensor | None = None  # (B, T, T) audio attention, ReLU(Q_a K_a^T)
    w_m: torch.Tensor | None = None  # (B, T, T) masked multimodal attention after the softmax


def scale_by_sqrt_norm(x: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each utterance's projected sequence by the square root of its L2 (Frobenius) norm.

    Paper (eq. 2-3): both modalities are scaled this way so that the dot products stay small.
    Authors' code: only the *text* is scaled, by ONE scalar per *batch*, sqrt(||flatten(whole batch)||_2),
    computed in numpy (so no gradient flows through it); the audio is not scaled at all.
    Here: per utterance (a score must not depend on its batch mates), over valid positions only (padding must
    not change the result), both modalities (paper), detached like the authors' scalar. An all-zero sequence
    (no audio) stays zero thanks to ``eps``.
    """
    x = x * valid.unsqueeze(-1)  # (B, T, D), padded positions zeroed
    norm = x.detach().flatten(1).norm(dim=1).clamp_min(eps)  # (B,)
    return x / norm.sqrt().view(-1, 1, 1)  # (B, T, D)


class MaskedMultimodalAttention(nn.Module):
    """Paper eq. 1-8: word weights from text and audio self-similarity, applied to the BERT outputs."""

    def __init__(self, config: CMBertConfig, hidden_size: int, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.config = config
        self.proj_t = nn.Conv1d(hidden_size, config.proj_dim, config.text_kernel, padding=config.text_kernel // 2,
                                bias=config.proj_bias)
        self.proj_a = nn.Conv1d(config.audio_dim, config.proj_dim, config.audio_kernel,
                                padding=config.audio_kernel // 2, bias=config.proj_bias)
        # Learned scalars of eq. 6, initialised as in the authors' code (w_t = w_a = 1, b = 0).
        self.w_t = nn.Parameter(torch.ones(1))
        self.w_a = nn.Parameter(torch.ones(1))
        self.b = nn.Parameter(torch.zeros(1))
        self.attention_dropout = nn.Dropout(config.attention_dropout)
        # (H, Da), zeros, created without drawing random numbers: a seed gives the paper's weights either way.
        # With audio_value_hidden = N: value_a_in (N, Da), drawn on a forked RNG (the other weights stay those
        # of the same seed without it), and value_a (H, N), zeros.
        self.value_a_in, self.value_a = None, None
        n, da = config.audio_value_hidden, config.audio_dim
        if config.audio_values and n:
            with torch.random.fork_rng(devices=[]):
                self.value_a_in = nn.Parameter(torch.randn(n, da) * da ** -0.5)
        if config.audio_values:
            self.value_a = nn.Parameter(torch.zeros(hidden_size, n or da))
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x_t: torch.Tensor, audio: torch.Tensor, attention_mask: torch.Tensor):
        """x_t (B, T, H) BERT outputs, audio (B, T, Da) word-aligned, attention_mask (B, T) 1 = real token."""
        valid = attention_mask.to(torch.bool)  # (B, T)
        keep = valid.unsqueeze(-1).to(x_t.dtype)  # (B, T, 1)
        # Zero the padding before the convolutions so a kernel > 1 cannot pull padding into real positions.
        q_t = self.proj_t((x_t * keep).transpose(1, 2)).transpose(1, 2)  # (B, H, T) -> (B, D, T) -> (B, T, D)
        q_a = self.proj_a((audio * keep).transpose(1, 2)).transpose(1, 2)  # (B, Da, T) -> (B, D, T) -> (B, T, D)
        q_t = scale_by_sqrt_norm(q_t, valid)  # Q_t = K_t, (B, T, D)
        q_a = scale_by_sqrt_norm(q_a, valid)  # Q_a = K_a, (B, T, D)

        alpha_t = F.relu(q_t @ q_t.transpose(1, 2))  # (B, T, T), eq. 4
        beta_a = F.relu(q_a @ q_a.transpose(1, 2))  # (B, T, T), eq. 5
        w_f = self.w_t * alpha_t + self.w_a * beta_a + self.b  # (B, T, T), eq. 6

        # Eq. 7: padded keys get mask_value before the softmax. The authors *add* -10000 to both the padded rows
        # and the padded columns; here the padded columns are *replaced* (exactly zero weight whatever W_f is).
        # Padded query rows are left alone: they never reach [CLS], and the heatmaps crop them.
        w_f = w_f.masked_fill(~valid.unsqueeze(1), self.config.mask_value)  # (B, T, T), mask broadcast (B, 1, T)
        w_m = torch.softmax(w_f, dim=-1)  # (B, T, T)

        values = x_t  # (B, T, H)
        if self.value_a is not None:  # ours: audio content in the values; zero audio (padding, [CLS]) adds 0
            content = audio * keep  # (B, T, Da)
            if self.value_a_in is not None:
                content = F.gelu(F.linear(content, self.value_a_in))  # (B, T, Da) -> (B, T, N)
            values = x_t + F.linear(content, self.value_a)  # (B, T, Da or N) -> (B, T, H)
        x_att = self.attention_dropout(w_m) @ values  # (B, T, T) @ (B, T, H) -> (B, T, H), eq. 8
        # Residual, linear, LayerNorm, in the authors' order: LayerNorm(dropout(dense(X_att + X_t))).
        hidden = self.layer_norm(self.dropout(self.dense(x_att + x_t)))  # (B, T, H)
        return hidden, alpha_t, beta_a, w_m


class CMBert(nn.Module):
    """Encoder -> (masked multimodal attention) -> [CLS] -> dropout -> linear -> score."""

    def __init__(self, config: CMBertConfig, encoder: nn.Module):
        super().__init__()
        self.config = config
        self.encoder = encoder
        hidden_size = encoder.config.hidden_size
        eps = getattr(encoder.config, "layer_norm_eps", 1e-12)
        self.fusion = MaskedMultimodalAttention(config, hidden_size, eps) if config.fusion == "cmbert" else None
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden_size, 1)
        self.audio_head = None  # T-BERT (fusion "none") reads no audio: no term (DDP refuses unused weights)
        if config.audio_direct and self.fusion is not None:
            # (1, Da), zeros, drawn from no RNG (a seed's other weights stay the same with or without it)
            self.audio_head = nn.Parameter(torch.zeros(1, config.audio_dim))
        init_std = getattr(encoder.config, "initializer_range", 0.02)
        for linear in [self.head] + ([self.fusion.dense] if self.fusion is not None else []):
            nn.init.normal_(linear.weight, std=init_std)  # BERT's initialisation, as the authors' apply()
            nn.init.zeros_(linear.bias)
        # Not persistent: the config is where they live (config.json), so a checkpoint cannot disagree with it.
        mean = torch.tensor(config.audio_mean or [0.0] * config.audio_dim, dtype=torch.float32)
        std = torch.tensor(config.audio_std or [1.0] * config.audio_dim, dtype=torch.float32)
        self.register_buffer("audio_mean", mean, persistent=False)  # (Da,)
        self.register_buffer("audio_std", std.clamp_min(1e-6), persistent=False)  # (Da,)
        if config.freeze_embeddings:
            for p in encoder.get_input_embeddings().parameters():
                p.requires_grad_(False)
            for p in getattr(encoder, "embeddings", nn.Module()).parameters():  # positions, token types, LN
                p.requires_grad_(False)

    def cls_audio(self, audio: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The audio vector at [CLS] (position 0): zeros (paper) or the mean over the real word-pieces."""
        audio = audio.clone()  # (B, T, Da)
        if self.config.cls_audio == "zero":
            # With a bias-free kernel-1 projection, Q_a[CLS] = 0, so row [CLS] of beta_a is 0 and the score is
            # exactly independent of the audio. That is what the paper's model does (A_[CLS] is a zero vector).
            audio[:, 0] = 0.0
            return audio
        # Word-pieces are positions 1 .. n-2 ([SEP] is the last real position and carries zeros).
        n = attention_mask.sum(dim=1, keepdim=True)  # (B, 1)
        pos = torch.arange(audio.shape[1], device=audio.device).unsqueeze(0)  # (1, T)
        words = ((pos >= 1) & (pos < n - 1)).to(audio.dtype).unsqueeze(-1)  # (B, T, 1)
        mean = (audio * words).sum(dim=1) / words.sum(dim=1).clamp_min(1.0)  # (B, Da)
        audio[:, 0] = mean
        return audio

    def standardise(self, audio: torch.Tensor) -> torch.Tensor:
        """Scale word audio by the training set's statistics. Positions without audio ([CLS], [SEP], padding,
        audio-absent rows) are all-zero vectors and stay exactly zero, so the paper mode stays deaf."""
        present = (audio != 0).any(dim=-1, keepdim=True)  # (B, T, 1)
        scaled = (audio - self.audio_mean) / self.audio_std  # (B, T, Da), broadcast over (Da,)
        return torch.where(present, scaled, torch.zeros_like(audio))  # (B, T, Da)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                audio: torch.Tensor | None = None) -> CMBertOutput:
        x_t = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        if self.fusion is None:
            return CMBertOutput(score=self.head(self.dropout(x_t[:, 0])).squeeze(-1))  # (B, H) -> (B, 1) -> (B,)
        if audio is None:
            audio = x_t.new_zeros(*x_t.shape[:2], self.config.audio_dim)  # (B, T, Da)
        audio = self.standardise(audio.to(x_t.dtype))  # (B, T, Da)
        audio = self.cls_audio(audio, attention_mask)  # (B, T, Da)
        hidden, alpha_t, beta_a, w_m = self.fusion(x_t, audio, attention_mask)
        score = self.head(self.dropout(hidden[:, 0])).squeeze(-1)  # (B, H) -> (B, 1) -> (B,)
        if self.audio_head is not None:
            score = score + F.linear(audio[:, 0], self.audio_head).squeeze(-1)  # (B, Da) -> (B, 1) -> (B,)
        return CMBertOutput(score=score, alpha_t=alpha_t, beta_a=beta_a, w_m=w_m)

    # The fusion's parameters that only audio reaches: with zero audio (text-only rows) their gradients are
    # exactly zero, so their learning rate cannot change a text-only model.
    AUDIO_PARAMS = ("fusion.proj_a.", "fusion.value_a", "fusion.w_a", "audio_head")

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group: the encoder and head at the BERT lr, the fusion's
        audio-only parameters (``AUDIO_PARAMS``) and the rest of the fusion each at their own."""
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "head": [], "fusion": [], "audio": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                group = "audio" if name.startswith(self.AUDIO_PARAMS) else name.split(".", 1)[0]
                groups[group].append(p)
        return groups


# ---------------------------------------------------------------- building the encoder


def build_encoder(config: CMBertConfig) -> tuple[nn.Module, CMBertConfig]:
    """The encoder and the config it fits: pretrained weights when ``config.encoder_config`` is None (the
    returned config then carries the encoder's, so a checkpoint rebuilds it without the weights), else a bare
    encoder from ``encoder_config``. ``config`` itself is not changed."""
    from transformers import AutoConfig, AutoModel

    if config.encoder_config is None:
        path = resolve_encoder(config.encoder)
        with torch.random.fork_rng(devices=[]):  # a pooler missing from the weights draws no random numbers
            encoder = AutoModel.from_pretrained(path)
        if getattr(encoder, "pooler", None) is not None:
            # CM-BERT never uses the pooler (and DDP dislikes unused weights). Loaded, then dropped: loading the
            # model without it would print transformers' LOAD REPORT of "unexpected" pooler weights in every worker.
            encoder.pooler = None
        return encoder, replace(config, encoder_config=encoder.config.to_dict())
    data = dict(config.encoder_config)
    encoder_config = AutoConfig.for_model(data.pop("model_type", "bert"), **data)
    try:
        return AutoModel.from_config(encoder_config, add_pooling_layer=False), config
    except TypeError:
        return AutoModel.from_config(encoder_config), config


def build_model(config: CMBertConfig) -> CMBert:
    """CM-BERT on its encoder; ``model.config`` is the filled config (``build_encoder``): save that one."""
    encoder, filled = build_encoder(config)
    return CMBert(filled, encoder)


def load_tokenizer(config: CMBertConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_encoder(config.encoder))


# ---------------------------------------------------------------- FLOPs (as nanoGPT's estimate_mfu)


def estimate_flops(config: CMBertConfig, tokens: float) -> dict[str, float]:
    """Matmul FLOPs of one utterance of ``tokens`` real word-pieces: ``forward``, and ``train`` = 3 x forward
    (backward ~ 2 x forward). Analytic, from the config alone (the encoder's sizes: ``encoder_config``, else the
    encoder's own config file); padding is not useful work, so it is not counted. Per encoder layer: Q, K, V, O
    and the FFN, 2 t (4 H^2 + 2 H I), plus QK^T and AV over all heads, 4 t^2 H. The fusion (eq. 1-8): the two
    projections, 2 t D (H k_t + Da k_a); the two T x T similarities, 4 t^2 D; W_m X_t, 2 t^2 H; its dense layer,
    2 t H^2; with ``audio_values`` also A V_a, 2 t Da H, or 2 t N (Da + H) as an MLP (W_m then multiplies X_t + A V_a: no second product).
    The head: 2 H, with ``audio_direct`` also 2 Da. Embeddings, norms, biases and softmaxes are left out (about 0.1%)."""
    enc = config.encoder_config
    if enc is None:
        from transformers import AutoConfig

        enc = AutoConfig.from_pretrained(resolve_encoder(config.encoder)).to_dict()
    h, inter, layers, t = enc["hidden_size"], enc["intermediate_size"], enc["num_hidden_layers"], float(tokens)
    fwd = layers * (2 * t * (4 * h * h + 2 * h * inter) + 4 * t * t * h) + 2 * h
    if config.fusion == "cmbert":
        d, da = config.proj_dim, config.audio_dim
        if config.audio_direct:
            fwd += 2 * da  # once per utterance, beside the head
        fwd += 2 * t * d * (h * config.text_kernel + da * config.audio_kernel) + 4 * t * t * d + 2 * t * t * h
        fwd += 2 * t * h * h
        if config.audio_values:
            n = config.audio_value_hidden
            fwd += 2 * t * n * (da + h) if n else 2 * t * da * h
    return {"forward": fwd, "train": 3.0 * fwd}
