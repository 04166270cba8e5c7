"""The world model: frame conversion, the multimodal tokenizer and the dynamics transformer."""

from wmgym.model.frames import frames_to_obs, mask_iou, obs_to_frames, psnr, ssim
from wmgym.model.tokenizer import ContextCode, MMTokenizer, TokenizerConfig
from wmgym.model.transformer import (
    DynamicsConfig,
    DynamicsOutput,
    DynamicsTransformer,
    FrameSample,
    KVCache,
)

__all__ = [
    "ContextCode",
    "DynamicsConfig",
    "DynamicsOutput",
    "DynamicsTransformer",
    "FrameSample",
    "KVCache",
    "MMTokenizer",
    "TokenizerConfig",
    "frames_to_obs",
    "mask_iou",
    "obs_to_frames",
    "psnr",
    "ssim",
]
