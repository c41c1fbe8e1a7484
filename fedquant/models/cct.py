"""Compact Convolutional Transformer (Hassani et al. 2021, arXiv 2104.05704), CCT-2/3x2 scale.

Built from plain ``nn.Conv2d``/``nn.Linear`` modules only, so that ``quantize_model`` wraps every
weight matrix (``nn.MultiheadAttention`` is avoided on purpose: its ``in_proj_weight`` is a raw
Parameter and its ``out_proj`` a ``NonDynamicallyQuantizableLinear``, both of which would escape
fake quantization).
"""

from __future__ import annotations

import math

import torch
from torch import nn

POSITIONAL = ("learnable", "sine")


def default_tokenizer_layers(image_size: int) -> int:
    """Conv blocks of the tokenizer: 2 (CCT's x2) for 16 px and up (32x32 CIFAR -> 8x8 = 64
    tokens, 28x28 Fashion-MNIST -> 7x7 = 49), 1 below (8x8 digits -> 4x4 = 16 tokens; two blocks
    would leave 2x2 = 4)."""
    return 2 if image_size >= 16 else 1


def sinusoidal_embedding(tokens: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine table of Vaswani et al. 2017, shape ``(1, tokens, dim)``."""
    pos = torch.arange(tokens, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(tokens, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table[None]


class Tokenizer(nn.Module):
    """``[Conv 3x3 (stride 1, pad 1, no bias) -> ReLU -> MaxPool 3x3 (stride 2, pad 1)] * layers``,
    then the feature map read as a sequence of ``H*W`` tokens of ``embed_dim`` channels. The
    intermediate convs have ``channels`` channels (CCT: 64), the last has ``embed_dim``."""

    def __init__(self, in_channels: int, embed_dim: int, layers: int, channels: int) -> None:
        super().__init__()
        widths = [in_channels] + [channels] * (layers - 1) + [embed_dim]
        blocks: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.ReLU(),
                       nn.MaxPool2d(3, 2, 1)]
        self.blocks = nn.Sequential(*blocks)
        self.layers = layers

    def side(self, image_size: int) -> int:
        """Token-grid side for a square input: each block maps ``s`` to ``ceil(s / 2)``."""
        for _ in range(self.layers):
            image_size = (image_size + 1) // 2
        return image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        # NHWC view -> (B, H*W, C): free for channels_last maps, one copy for NCHW; the token
        # order (row-major over H, W) is the same for both layouts.
        return x.permute(0, 2, 3, 1).flatten(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention from plain Linear layers: ``qkv`` (no bias, as in CCT) and
    ``proj``. The score and mixing matmuls and the softmax run in float (explicit ops, not a
    fused kernel: deterministic on every device)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.embed_dim={dim} is not valid with model.heads={heads}: "
                             "allowed is a multiple of heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` with
    ``MLP = Linear -> GELU -> Linear`` (hidden ``mlp_ratio * dim``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class CCT(nn.Module):
    """CCT-2/3x2 (the paper's smallest CIFAR model) adapted to the input size.

    Architecture (defaults; ``options`` change them):

    - convolutional tokenizer: ``tokenizer_layers`` blocks of Conv 3x3 (no bias) -> ReLU ->
      MaxPool 3x3/2, widths ``in_channels -> 64 -> 128``; the default depth is 2 for inputs of
      16 px and more (32x32 -> 64 tokens, 28x28 -> 49) and 1 below (8x8 -> 16 tokens, one
      ``in_channels -> 128`` conv), see :func:`default_tokenizer_layers`;
    - positional embedding added to the tokens: ``"learnable"`` (default, as CCT does for its
      small models; truncated normal, std 0.2) or ``"sine"`` (a fixed, non-persistent table);
    - ``depth`` = 2 pre-norm transformer layers, ``embed_dim`` = 128, ``heads`` = 2,
      ``mlp_ratio`` = 1 (GELU), attention from explicit ``nn.Linear`` q/k/v (one ``qkv`` layer,
      no bias) and output projection;
    - final LayerNorm, sequence pooling (``softmax`` over tokens of ``Linear(dim, 1)``, then the
      attention-weighted mean of the tokens), ``Linear(dim, num_classes)`` classifier.

    Parameters: 283,723 for 3x32x32 / 10 classes (the paper's 0.28M), 280,651 for 1x28x28 /
    10 classes, 203,275 for 1x8x8 / 10 classes (one tokenizer conv, 16 positions).

    No dropout, attention dropout or stochastic depth (CCT trains with stochastic depth 0.1):
    unseeded randomness in the forward pass would break fedquant's seeded reproducibility.
    Initialisation is deterministic given ``torch.manual_seed`` (set by the caller): Linear
    weights truncated normal (std 0.02) with zero biases, convs Kaiming normal, LayerNorm 1/0.
    Differences from the official code: the residual stream is not re-normalised between
    attention and MLP (the official layer applies ``norm1`` to the stream itself, which makes
    the MLP half post-norm); here both halves are pre-norm.

    Quantization (fedquant fake-quantizes the *inputs* of every Conv/Linear per tensor and their
    weights per output channel): LayerNorm, softmax, GELU, the residual additions, the
    positional embedding and the two attention matmuls (``q k^T``, ``attn v``) stay float; the
    activations entering ``qkv``, ``proj``, ``fc1``, ``fc2``, the pooling and the classifier
    Linear layers are quantized. Where this hurts (Bondarenko, Nagel & Blankevoort 2021,
    arXiv 2109.12948): transformers develop strongly structured outliers in a few embedding
    dimensions of the residual stream, which LayerNorm's affine scale carries into its outputs.
    Here those LayerNorm outputs are exactly the inputs of ``qkv``, ``fc1`` and the pooling
    Linear, so one per-tensor range must cover a few large dimensions and many small ones, and
    at 4 bits and below the small ones collapse onto a handful of grid points (the ``fc2``
    input, after GELU, is the other wide-range tensor). The paper's remedy, per-embedding-group
    activation ranges, is not implemented: fedquant's activation quantizer is per tensor.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 embed_dim: int = 128, depth: int = 2, heads: int = 2, mlp_ratio: float = 1.0,
                 tokenizer_layers: int | None = None, tokenizer_channels: int = 64,
                 positional: str = "learnable") -> None:
        super().__init__()
        if positional not in POSITIONAL:
            raise ValueError(f"model.positional={positional!r} is not valid: allowed are "
                             f"{', '.join(POSITIONAL)}")
        layers = tokenizer_layers
        if layers is None:
            layers = default_tokenizer_layers(image_size)
        if layers < 1:
            raise ValueError(f"model.tokenizer_layers={layers!r} is not valid: allowed is >= 1")
        self.tokenizer = Tokenizer(in_channels, embed_dim, layers, tokenizer_channels)
        self.tokens = self.tokenizer.side(image_size) ** 2
        if positional == "learnable":
            self.pos_embed = nn.Parameter(torch.empty(1, self.tokens, embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.2)
        else:
            self.register_buffer("pos_embed", sinusoidal_embedding(self.tokens, embed_dim),
                                 persistent=False)
        self.blocks = nn.Sequential(
            *(EncoderLayer(embed_dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim)
        self.pool = nn.Linear(embed_dim, 1)
        self.fc = nn.Linear(embed_dim, num_classes)  # registered last: the "last layer" when pinned
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No shape check here (data-dependent control flow would stop torch.fx tracing, which
        # the ONNX exporter uses): another image size fails at the positional-embedding add.
        x = self.norm(self.blocks(self.tokenizer(x) + self.pos_embed))
        weights = torch.softmax(self.pool(x), dim=1)  # (B, N, 1): attention over the tokens
        return self.fc((weights.transpose(1, 2) @ x).squeeze(1))
