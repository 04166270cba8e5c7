"""Conversion between environment observations and model frames, plus image metrics.

A *frame* is a float tensor of 5 channels, channels first: rgb (3, in [0, 1]), depth (1,
normalised to [0, 1] as ``(d - near) / (far - near)`` and clipped) and mask (1, in {0, 1}).
Observations follow the env's layout: ``rgb`` uint8 ``(..., H, W, 3)``, ``depth`` float32 metres
``(..., H, W, 1)``, ``mask`` uint8 ``(..., H, W, 1)``. All functions take any leading batch dims.

The metrics (:func:`psnr`, :func:`ssim`, :func:`mask_iou`) are differentiable where it makes
sense and reduce only over the image dims, so they return one value per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RGB = slice(0, 3)
DEPTH = slice(3, 4)
MASK = slice(4, 5)
N_CHANNELS = 5


def obs_to_frames(
    rgb: Tensor, depth: Tensor, mask: Tensor, depth_range: tuple[float, float]
) -> Tensor:
    """Turn observations into model frames.

    Args:
        rgb: uint8 ``(..., H, W, 3)`` (tensors or numpy arrays).
        depth: float metres ``(..., H, W, 1)``.
        mask: uint8 ``(..., H, W, 1)``; any non-zero value counts as foreground.
        depth_range: ``(near, far)`` in metres; depth is clipped to it.

    Returns:
        float32 ``(..., 5, H, W)``.

    """
    near, far = depth_range
    rgb = torch.as_tensor(rgb).to(torch.float32) / 255.0
    depth = ((torch.as_tensor(depth).to(torch.float32) - near) / (far - near)).clamp(0.0, 1.0)
    mask = (torch.as_tensor(mask) > 0).to(torch.float32)
    return torch.cat([rgb, depth, mask], dim=-1).movedim(-1, -3).contiguous()


def frames_to_obs(
    frames: Tensor, depth_range: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor]:
    """Turn model frames (or decoder outputs) back into observations.

    Args:
        frames: ``(..., 5, H, W)`` with rgb and depth in [0, 1] (values outside are clipped) and
            mask as a probability (thresholded at 0.5).
        depth_range: ``(near, far)`` in metres.

    Returns:
        ``(rgb, depth, mask)``: uint8 ``(..., H, W, 3)``, float32 metres ``(..., H, W, 1)``
        and uint8 ``(..., H, W, 1)``.

    """
    near, far = depth_range
    x = frames.detach().to(torch.float32).movedim(-3, -1)
    rgb = (x[..., RGB].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    depth = near + x[..., DEPTH].clamp(0.0, 1.0) * (far - near)
    mask = (x[..., MASK] > 0.5).to(torch.uint8)
    return rgb.contiguous(), depth.contiguous(), mask.contiguous()


# ----------------------------------------------------------------------------- metrics


def _float_and_range(
    a: Tensor, b: Tensor, data_range: float | None
) -> tuple[Tensor, Tensor, float]:
    if data_range is None:
        data_range = 255.0 if a.dtype == torch.uint8 else 1.0
    return a.to(torch.float32), b.to(torch.float32), data_range


def psnr(a: Tensor, b: Tensor, data_range: float | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, over the last three dims.

    Args:
        a: Image batch ``(..., C, H, W)`` (or ``(..., H, W, C)``; the reduction is symmetric).
        b: Same shape as ``a``.
        data_range: Peak value; defaults to 255 for uint8 inputs, else 1.

    Returns:
        ``(...)`` float32; ``inf`` where the images are identical.

    """
    a, b, data_range = _float_and_range(a, b, data_range)
    mse = (a - b).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float | None = None,
    window_size: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Structural similarity per image (mean over channels and valid window positions).

    Uses a separable Gaussian window and no padding (the usual Wang et al. definition).
    Differentiable in both inputs.

    Args:
        a: Image batch, channels first ``(..., C, H, W)`` with ``H, W >= window_size``.
        b: Same shape as ``a``.
        data_range: Peak value; defaults to 255 for uint8 inputs, else 1.
        window_size: Side of the Gaussian window.
        sigma: Standard deviation of the window.

    Returns:
        ``(...)`` float32, 1 where the images are identical.

    """
    a, b, data_range = _float_and_range(a, b, data_range)
    lead, (c, h, w) = a.shape[:-3], a.shape[-3:]
    a = a.reshape(-1, c, h, w)
    b = b.reshape(-1, c, h, w)
    g = _gaussian_window(window_size, sigma, a.device)
    gx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    gy = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, gx, groups=c), gy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(-3, -2, -1)).reshape(lead)


def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of binary masks per image, over the last three dims.

    Args:
        pred: Mask probabilities or {0, 1} values, ``(..., 1, H, W)`` (any layout works).
        target: Same shape; values above ``threshold`` count as foreground.
        threshold: Foreground threshold applied to both inputs.

    Returns:
        ``(...)`` float32; 1 where both masks are empty.

    """
    p = pred.to(torch.float32) > threshold
    t = target.to(torch.float32) > threshold
    inter = (p & t).sum(dim=(-3, -2, -1)).to(torch.float32)
    union = (p | t).sum(dim=(-3, -2, -1)).to(torch.float32)
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
