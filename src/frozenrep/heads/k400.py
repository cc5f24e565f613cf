"""Action recognition: the frozen image backbone on every frame, a temporal transformer on top.

All frames of all clips go through the backbone as one batch (no loop over frames). Each frame's
chosen feature map is pooled to a small grid (so that where things are survives) and projected to
``width``; ``depth`` transformer blocks with learned temporal positions mix the frames; depth 0 is
temporal average pooling. Depth, width and frames come from params.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from frozenrep.backbones import BackboneAdapter, feature_levels


@dataclass
class VideoHeadConfig:
    """Temporal head settings: the keys of ``k400.head`` (defaults in the profile schema)."""

    num_frames: int
    depth: int  # temporal transformer blocks; 0 = temporal average pooling
    width: int
    num_heads: int
    mlp_ratio: float
    level: int  # backbone level whose features are used (-1: the last)
    spatial_pool: int  # per-frame features pooled to pool x pool cells before projection
    dropout: float


class VideoClassifier(nn.Module):
    def __init__(self, backbone: BackboneAdapter, num_classes: int, head: VideoHeadConfig,
                 image_mean, image_std) -> None:
        super().__init__()
        self.backbone = feature_levels(backbone, keep=[head.level])  # the adapter, or a pyramid on a plain one
        self.head_cfg = head
        self.level = self.backbone.names[head.level]
        channels = self.backbone.channels[head.level]
        self.project = nn.Linear(channels * head.spatial_pool ** 2, head.width)
        self.time_embed = nn.Parameter(torch.zeros(1, head.num_frames, head.width))
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(head.width, head.num_heads, int(head.width * head.mlp_ratio), head.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(head.depth))
        self.norm = nn.LayerNorm(head.width)
        self.classifier = nn.Linear(head.width, num_classes)
        self.register_buffer("mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)

    @property
    def backbone_levels(self) -> list[str]:
        """The backbone levels this head reads (a feature cache keeps only these)."""
        return self.backbone.source_levels([self.level])

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) in 0..1 -> (B, T, width): every frame through the backbone in one batch."""
        b, c, t, h, w = video.shape
        self.check_frames(t)
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        return self.tokens_of_input((frames - self.mean) / self.std, b)

    def tokens_of_input(self, frames: torch.Tensor, clips: int) -> torch.Tensor:
        """(clips * T, C, H, W) normalised frames, clip after clip -> (clips, T, width)."""
        feats = self.backbone(frames)[self.level]
        pooled = F.adaptive_avg_pool2d(feats, self.head_cfg.spatial_pool).flatten(1)
        return self.project(pooled).view(clips, frames.shape[0] // clips, -1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.classify(self.frame_features(video))

    def check_frames(self, frames: int) -> None:
        if frames != self.head_cfg.num_frames:
            raise ValueError(f"clip has {frames} frames but the head was built for {self.head_cfg.num_frames} "
                             "(k400.head.num_frames)")

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, width) frame tokens -> (B, classes) logits: the temporal blocks, pooling, classifier."""
        if self.blocks:
            tokens = tokens + self.time_embed
            for block in self.blocks:
                tokens = block(tokens)
        return self.classifier(self.norm(tokens.mean(1)))


def video_loss(model: VideoClassifier, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    clips, labels = batch
    return {"loss_cls": F.cross_entropy(model(clips), labels)}
