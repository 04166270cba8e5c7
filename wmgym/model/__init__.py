"""The world model: frame conversion, the multimodal tokenizer and the dynamics transformer.

Nothing here knows a task: dimensions and the event latent come from the model's config.
"""

from wmgym.model.frames import frames_to_obs, mask_iou, obs_to_frames, psnr, ssim
from wmgym.model.tokenizer import ContextCode, MMTokenizer, TokenizerConfig
from wmgym.model.transformer import (
    DynamicsConfig,
    DynamicsOutput,
    DynamicsTransformer,
    FrameSample,
    KVCache,
)
from wmgym.model.world_model import RolloutState, StepOutput, WorldModel

__all__ = [
    "ContextCode",
    "DynamicsConfig",
    "DynamicsOutput",
    "DynamicsTransformer",
    "FrameSample",
    "KVCache",
    "MMTokenizer",
    "RolloutState",
    "StepOutput",
    "TokenizerConfig",
    "WorldModel",
    "frames_to_obs",
    "mask_iou",
    "obs_to_frames",
    "psnr",
    "ssim",
]
