"""Pictures users look at: tiled frames, GIFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def depth_to_rgb(depth: np.ndarray, depth_range: tuple[float, float]) -> np.ndarray:
    """Metric depth (H, W, 1) to a uint8 grey image, near = bright."""
    near, far = depth_range
    d = np.clip((depth[..., 0] - near) / (far - near), 0.0, 1.0)
    g = ((1.0 - d) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def tile_frame(rgb, depth, mask, depth_range) -> np.ndarray:
    """Rgb | depth | mask side by side as one uint8 (H, 3W, 3) image."""
    m = np.repeat((mask[..., :1] * 255).astype(np.uint8), 3, axis=-1)
    return np.concatenate([rgb, depth_to_rgb(depth, depth_range), m], axis=1)


def upscale(img: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor (keeps pixels honest)."""
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def write_gif(path: str | Path, frames: list[np.ndarray], fps: int = 10, scale: int = 3) -> Path:
    """Writes frames (uint8 HxWx3) as a looping GIF, atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.gif")
    imageio.mimsave(tmp, [upscale(f, scale) for f in frames], duration=1000 / fps, loop=0)
    tmp.replace(path)
    return path


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """Saves a matplotlib figure atomically (temporary file, then rename) and closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    fig.savefig(tmp, **{"dpi": 110, **kwargs})
    plt.close(fig)
    tmp.replace(path)
    return path
