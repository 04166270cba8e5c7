"""MMTokenizer: a compressive multimodal frame tokenizer (ideas from iVideoGPT and iMoWM).

A trajectory is tokenized relative to one *context* frame:

* context path: ``E_c`` downsamples a frame 64 -> 8 and quantizes it into 64 tokens; ``D_c``
  reconstructs it. ``E_c``'s multi-scale feature maps are cached for the future path.
* future path: ``E_p`` compresses any later frame into only 16 tokens (a 4x4 grid) and ``D_p``
  decodes them; both cross-attend, scale by scale, to the cached context features, so the
  tokens only need to carry what changed (the robot, what it moves) and not the static scene.

Frames are ``(B, 5, H, W)``: rgb, depth, mask (see :mod:`wmgym.model.frames`). The decoders emit
logits; the public ``decode_*`` methods return sigmoids (rgb/depth in [0, 1], mask probability).
Both paths quantize with FSQ (finite scalar quantization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmgym.model.checkpoint import check_fields
from wmgym.model.frames import DEPTH, MASK, RGB, mask_iou, psnr, ssim


@dataclass
class TokenizerConfig:
    """Hyper-parameters of :class:`MMTokenizer` (defaults train on 2 CPU cores)."""

    in_channels: int = 5  # rgb (3) + depth (1) + mask (1)
    resolution: int = 64  # input height = width
    base_channels: int = 16  # channels at full resolution
    channel_mult: tuple[int, ...] = (1, 2, 4, 6, 6)  # channel multiplier at 64, 32, 16, 8, 4 px
    num_res_blocks: int = 1  # residual blocks per resolution level
    ctx_downsample: int = 8  # context grid = resolution / ctx_downsample (8x8 = 64 tokens)
    future_downsample: int = 16  # future grid = resolution / future_downsample (4x4 = 16 tokens)
    xattn_resolutions: tuple[int, ...] = (16, 8, 4)  # future-path scales that cross-attend
    attn_head_dim: int = 32  # channels per cross-attention head
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels per latent dim (vocab = product)
    w_rgb_l1: float = 1.0  # loss weight: rgb L1
    w_rgb_ssim: float = 0.2  # loss weight: rgb (1 - SSIM)
    w_depth: float = 1.0  # loss weight: depth L1
    w_mask: float = 0.2  # loss weight: mask BCE
    w_future: float = 1.0  # weight of the future-frame terms relative to the context terms
    decoder_subpixel: int = 1  # decoders stop at resolution / this; a sub-pixel conv upsamples

    def channels(self, res: int) -> int:
        """Feature channels at spatial resolution ``res``."""
        level = int(math.log2(self.resolution // res))
        return self.base_channels * self.channel_mult[level]


def config_from_dict(config: dict) -> TokenizerConfig:
    """A :class:`TokenizerConfig` from its ``asdict`` form (JSON lists back to tuples).

    Raises:
        ValueError: Missing or unknown keys, naming them and the expected ones.
    """
    check_fields(TokenizerConfig, config, "tokenizer config")
    return TokenizerConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in config.items()})


@dataclass
class ContextCode:
    """A tokenized context frame: its tokens and the encoder features the future path needs."""

    tokens: Tensor  # (B, N) long context tokens
    feats: list[Tensor] = field(default_factory=list)  # E_c feature maps, fine to coarse

    def select(self, index: Tensor | slice) -> ContextCode:
        """Return the code of a subset of the batch (e.g. to reset some envs)."""
        return ContextCode(self.tokens[index], [f[index] for f in self.feats])


# ----------------------------------------------------------------------------- quantizers


def _codebook_stats(codes: Tensor, size: int) -> dict[str, float]:
    """Fraction of the codebook used by ``codes`` and the perplexity of their histogram."""
    counts = torch.bincount(codes.flatten(), minlength=size).to(torch.float32)
    p = counts / counts.sum()
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"usage": (counts > 0).float().mean().item(), "perplexity": entropy.exp().item()}


class FSQ(nn.Module):
    """Finite scalar quantization between 1x1 projections.

    Each latent dim is bounded and rounded to a few levels; the code index is the mixed-radix
    number of the per-dim levels (vocab = product). ``forward`` maps ``x (B, C, h, w)`` to
    ``(x_q (B, C, h, w), codes (B, h*w))`` and ``decode`` maps codes ``(B, g*g)`` back to
    ``x_q (B, C, g, g)``.
    """

    def __init__(self, channels: int, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, len(levels), 1)
        self.proj_out = nn.Conv2d(len(levels), channels, 1)
        self.codebook_size = math.prod(levels)
        lv = torch.tensor(levels, dtype=torch.long)
        basis = torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Flat latents ``(N, dims)`` -> their quantized values and codes ``(N,)``."""
        # tanh bounds dim i to L_i values around 0 (shifted by 1/2 for even L_i)
        half = (self.levels - 1).to(z.dtype) * (1 - 1e-3) / 2
        offset = (self.levels % 2 == 0).to(z.dtype) / 2
        zb = torch.tanh(z + torch.atanh(offset / half)) * half - offset
        q = zb + (zb.round() - zb).detach()  # straight-through rounding
        codes = ((q.detach().round().long() + self.levels // 2) * self.basis).sum(-1)
        return q / (self.levels // 2), codes

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes ``(N,)`` -> quantized values ``(N, dims)``."""
        digits = (codes.unsqueeze(-1) // self.basis) % self.levels
        return (digits - self.levels // 2) / (self.levels // 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        zq, codes = self.quantize(self.proj_in(x).permute(0, 2, 3, 1).reshape(b * h * w, -1))
        return self.proj_out(zq.view(b, h, w, -1).permute(0, 3, 1, 2)), codes.view(b, -1)

    def decode(self, codes: Tensor, grid: int) -> Tensor:
        zq = self.lookup(codes.flatten()).to(self.proj_out.weight.dtype)
        return self.proj_out(zq.view(codes.shape[0], grid, grid, -1).permute(0, 3, 1, 2))


# ----------------------------------------------------------------------------- building blocks


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if c % g == 0), c)


class ResBlock(nn.Module):
    """Pre-norm residual block of two 3x3 convolutions."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _sincos_2d(side: int, dim: int) -> Tensor:
    """Return a fixed 2-D sine-cosine position code ``(side*side, dim)``."""
    n = max(dim // 4, 1)
    freq = 1.0 / (100.0 ** (torch.arange(n) / n))
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ay, ax = yy.flatten()[:, None] * freq, xx.flatten()[:, None] * freq
    pe = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return F.pad(pe, (0, max(dim - pe.shape[1], 0)))[:, :dim]


class CrossAttention(nn.Module):
    """Future features attend to the context features of (about) the same scale.

    The query map may hold ``T`` frames per context (batch ``B*T`` vs ``B``): their positions are
    folded into one query sequence per context, so the context keys are never copied.
    """

    def __init__(self, dim: int, ctx_dim: int, side: int, ctx_side: int, head_dim: int) -> None:
        super().__init__()
        self.n_head = max(dim // head_dim, 1)
        self.norm, self.norm_ctx = _norm(dim), _norm(ctx_dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("pos", _sincos_2d(side, dim), persistent=False)
        self.register_buffer("pos_ctx", _sincos_2d(ctx_side, ctx_dim), persistent=False)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        bt, c, h, w = x.shape
        b, nh = ctx.shape[0], self.n_head
        t = bt // b
        q_in = self.norm(x).flatten(2).transpose(1, 2) + self.pos  # (BT, hw, C)
        kv_in = self.norm_ctx(ctx).flatten(2).transpose(1, 2) + self.pos_ctx  # (B, N, Cc)
        q = self.q(q_in).reshape(b, t * h * w, nh, c // nh).transpose(1, 2)
        k, v = self.kv(kv_in).view(b, -1, 2, nh, c // nh).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T*hw, hd)
        y = self.proj(y.transpose(1, 2).reshape(bt, h * w, c))
        return x + y.transpose(1, 2).reshape(bt, c, h, w)


class Level(nn.Module):
    """Residual blocks at resolution ``res``, then cross-attention to the context.

    Only on the future path (``ctx_grid`` given) and if ``res`` is in ``cfg.xattn_resolutions``:
    the level then attends to the context features of resolution ``max(res, ctx_grid)``, which
    have ``src.channels`` channels (``src``: the config of the encoder that made them).
    """

    def __init__(self, cfg: TokenizerConfig, res: int, ctx_grid: int | None,
                 src: TokenizerConfig | None = None) -> None:
        super().__init__()
        c = cfg.channels(res)
        self.blocks = nn.Sequential(*[ResBlock(c, c) for _ in range(cfg.num_res_blocks)])
        self.xattn, self.ctx_res = None, max(res, ctx_grid or 0)
        if ctx_grid is not None and res in cfg.xattn_resolutions:
            self.xattn = CrossAttention(c, (src or cfg).channels(self.ctx_res), res,
                                        self.ctx_res, cfg.attn_head_dim)

    def forward(self, h: Tensor, ctx: dict[int, Tensor] | None) -> Tensor:
        h = self.blocks(h)
        return h if self.xattn is None else self.xattn(h, ctx[self.ctx_res])


class Encoder(nn.Module):
    """Conv encoder ``resolution -> resolution / downsample`` (see :class:`Level`)."""

    def __init__(self, cfg: TokenizerConfig, downsample: int, ctx_grid: int | None = None) -> None:
        super().__init__()
        res = [cfg.resolution >> i for i in range(int(math.log2(downsample)) + 1)]
        self.stem = nn.Conv2d(cfg.in_channels, cfg.channels(res[0]), 3, padding=1)
        self.levels = nn.ModuleList(Level(cfg, r, ctx_grid) for r in res)
        self.down = nn.ModuleList(nn.Conv2d(cfg.channels(r), cfg.channels(r // 2), 3, 2, 1)
                                  for r in res[:-1])
        self.norm_out = _norm(cfg.channels(res[-1]))

    def forward(self, x: Tensor, ctx: dict[int, Tensor] | None = None) -> tuple[Tensor, list]:
        """``x (B, C, H, W)`` in [0, 1] -> ``(grid features, feature map of every level)``."""
        h, feats = self.stem(x * 2 - 1), []
        for i, level in enumerate(self.levels):
            h = level(h, ctx)
            feats.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        return F.silu(self.norm_out(h)), feats


class Decoder(nn.Module):
    """Conv decoder ``resolution / downsample -> resolution`` emitting per-channel logits.

    ``src`` is the config of the tokenizer whose grid features and context features the decoder
    reads (default ``cfg``): a smaller decoder (fewer ``base_channels``) can then decode another
    tokenizer's tokens, as :mod:`wmgym.train.distill` trains one to.
    """

    def __init__(self, cfg: TokenizerConfig, downsample: int, ctx_grid: int | None = None,
                 src: TokenizerConfig | None = None) -> None:
        super().__init__()
        sub = cfg.decoder_subpixel
        top = cfg.resolution // sub
        res = [top >> i for i in range(int(math.log2(downsample // sub)), -1, -1)]
        self.conv_in = nn.Conv2d((src or cfg).channels(res[0]), cfg.channels(res[0]), 3,
                                 padding=1)
        self.levels = nn.ModuleList(Level(cfg, r, ctx_grid, src) for r in res)
        self.up = nn.ModuleList(nn.Conv2d(cfg.channels(r), cfg.channels(2 * r), 3, padding=1)
                                for r in res[:-1])
        c = cfg.channels(top)
        self.map_size = c * top * top  # values per frame of its largest activation map
        self.head = nn.Sequential(_norm(c), nn.SiLU(),
                                  nn.Conv2d(c, cfg.in_channels * sub * sub, 3, padding=1))
        if sub > 1:
            self.head.append(nn.PixelShuffle(sub))

    def forward(self, z: Tensor, ctx: dict[int, Tensor] | None = None) -> Tensor:
        """Quantized grid features ``(B, C, g, g)`` -> logits ``(B, 5, H, W)``."""
        h = self.conv_in(z)
        for i, level in enumerate(self.levels):
            h = level(h, ctx)
            if i < len(self.up):
                h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)


# ----------------------------------------------------------------------------- tokenizer


def reconstruction_loss(cfg: TokenizerConfig, logits: Tensor, target: Tensor, tag: str,
                        metrics: dict[str, float]) -> Tensor:
    """Weighted rgb L1 + SSIM, depth L1 and mask BCE of decoder ``logits`` against ``target``.

    ``target`` holds frames in [0, 1] (a soft mask works: the BCE takes probabilities). Adds
    rgb PSNR/SSIM, depth L1 and mask IoU under ``<name>_<tag>`` to ``metrics``.
    """
    pred = torch.sigmoid(logits[:, :4])
    rgb, rgb_t = pred[:, RGB], target[:, RGB]
    l1 = (rgb - rgb_t).abs().mean()
    ssim_loss = 1 - ssim(rgb, rgb_t).mean()
    depth_l1 = (pred[:, DEPTH] - target[:, DEPTH]).abs().mean()
    bce = F.binary_cross_entropy_with_logits(logits[:, MASK], target[:, MASK])
    with torch.no_grad():
        metrics[f"psnr_{tag}"] = psnr(rgb, rgb_t).clamp_max(100.0).mean().item()
        metrics[f"ssim_{tag}"] = 1 - ssim_loss.item()
        metrics[f"depth_l1_{tag}"] = depth_l1.item()
        iou = mask_iou(torch.sigmoid(logits[:, MASK]), target[:, MASK])
        metrics[f"mask_iou_{tag}"] = iou.mean().item()
    return (cfg.w_rgb_l1 * l1 + cfg.w_rgb_ssim * ssim_loss + cfg.w_depth * depth_l1
            + cfg.w_mask * bce)


class MMTokenizer(nn.Module):
    """Context + compressive future tokenizer for 5-channel frames.

    Args:
        cfg: Tokenizer config.

    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ctx_grid = cfg.resolution // cfg.ctx_downsample
        self.future_grid = cfg.resolution // cfg.future_downsample
        self.ctx_encoder = Encoder(cfg, cfg.ctx_downsample)
        self.ctx_quant = FSQ(cfg.channels(self.ctx_grid), cfg.fsq_levels)
        self.ctx_decoder = Decoder(cfg, cfg.ctx_downsample)
        self.fut_encoder = Encoder(cfg, cfg.future_downsample, self.ctx_grid)
        self.fut_quant = FSQ(cfg.channels(self.future_grid), cfg.fsq_levels)
        self.fut_decoder = Decoder(cfg, cfg.future_downsample, self.ctx_grid)
        self.n_ctx_tokens, self.n_future_tokens = self.ctx_grid**2, self.future_grid**2
        self.ctx_vocab_size = self.ctx_quant.codebook_size
        self.future_vocab_size = self.fut_quant.codebook_size
        # context resolutions the future path reads, fine to coarse (the ContextCode.feats order)
        self.ctx_feat_res = sorted({max(r, self.ctx_grid) for r in cfg.xattn_resolutions
                                    if r <= cfg.resolution}, reverse=True)

    def _feat_dict(self, feats: list[Tensor]) -> dict[int, Tensor]:
        return {f.shape[-1]: f for f in feats}

    def _encode_context(self, frames: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        z, levels = self.ctx_encoder(frames)
        zq, tokens = self.ctx_quant(z)
        feats = [f for f in levels if f.shape[-1] in self.ctx_feat_res]
        return zq, tokens, feats

    def encode_context(self, frames: Tensor) -> ContextCode:
        """Tokenize context frames ``(B, 5, H, W)`` -> :class:`ContextCode` (tokens ``(B, N)``)."""
        _, tokens, feats = self._encode_context(frames)
        return ContextCode(tokens, feats)

    def decode_context(self, tokens: Tensor) -> Tensor:
        """Context tokens ``(B, N)`` -> frames ``(B, 5, H, W)`` (sigmoid outputs)."""
        return torch.sigmoid(self.ctx_decoder(self.ctx_quant.decode(tokens, self.ctx_grid)))

    def _encode_future(self, frames: Tensor, ctx_feats: list[Tensor]):
        z, _ = self.fut_encoder(frames.flatten(0, -4), self._feat_dict(ctx_feats))
        zq, tokens = self.fut_quant(z)
        return zq, tokens.view(*frames.shape[:-3], -1)

    def encode_future(self, frames: Tensor, ctx_feats: list[Tensor]) -> Tensor:
        """Tokenize future frames given their context's features.

        Args:
            frames: ``(B, 5, H, W)`` or ``(B, T, 5, H, W)`` (``T`` frames per context).
            ctx_feats: ``ContextCode.feats`` of the ``B`` context frames.

        Returns:
            Long tokens ``(B, 16)`` or ``(B, T, 16)``.

        """
        return self._encode_future(frames, ctx_feats)[1]

    def decode_future(self, tokens: Tensor, ctx_feats: list[Tensor],
                      decoder: Decoder | None = None) -> Tensor:
        """Future tokens ``(B, 16)`` or ``(B, T, 16)`` -> frames ``(B[, T], 5, H, W)``.

        All ``T`` frames of a sample share its context features without copying them.
        ``decoder`` replaces ``D_p`` (e.g. a distilled one built with ``src=self.cfg``).
        """
        x = torch.sigmoid(self.future_logits(tokens.reshape(-1, tokens.shape[-1]), ctx_feats,
                                             decoder))
        return x.view(*tokens.shape[:-1], *x.shape[1:])

    def future_logits(self, tokens: Tensor, ctx_feats: list[Tensor],
                      decoder: Decoder | None = None) -> Tensor:
        """Future tokens ``(B, 16)`` -> the decoder's logits ``(B, 5, H, W)`` (for training)."""
        zq = self.fut_quant.decode(tokens, self.future_grid)
        return (decoder or self.fut_decoder)(zq, self._feat_dict(ctx_feats))

    def loss(self, ctx_frames: Tensor, fut_frames: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction loss of both paths.

        Args:
            ctx_frames: Context frames ``(B, 5, H, W)``.
            fut_frames: Future frames of the same clips, ``(B, 5, H, W)`` or ``(B, T, 5, H, W)``.

        Returns:
            ``(scalar loss, metrics)``; metrics hold rgb PSNR/SSIM, depth L1, mask IoU for the
            ``ctx`` and ``fut`` reconstructions and codebook usage/perplexity of each path.

        """
        cfg, m = self.cfg, {}
        zq_c, tok_c, feats = self._encode_context(ctx_frames)
        loss_c = reconstruction_loss(cfg, self.ctx_decoder(zq_c), ctx_frames, "ctx", m)
        zq_f, tok_f = self._encode_future(fut_frames, feats)
        logits_f = self.fut_decoder(zq_f, self._feat_dict(feats))
        loss_f = reconstruction_loss(cfg, logits_f, fut_frames.reshape(logits_f.shape), "fut", m)
        loss = loss_c + cfg.w_future * loss_f
        with torch.no_grad():
            for tag, tok, size in (("ctx", tok_c, self.ctx_vocab_size),
                                   ("fut", tok_f, self.future_vocab_size)):
                for k, v in _codebook_stats(tok, size).items():
                    m[f"{k}_{tag}"] = v
        m["loss"] = loss.item()
        return loss, m
