"""Top-1 / top-5 accuracy with multi-view testing: softmax scores averaged over every view of a video."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from frozenrep.progress import Progress
from frozenrep.runtime import gather


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the k highest scores (k capped at the number of classes)."""
    result = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        result[f"top{k}"] = 100.0 * (top == labels[:, None]).any(1).float().mean().item() if len(labels) else 0.0
    return result


@torch.no_grad()
def evaluate_video(model: torch.nn.Module, videos: Iterable[tuple[int, int, torch.Tensor]], num_videos: int,
                   device: torch.device, batch_views: int = 8) -> tuple[dict[str, Any], torch.Tensor]:
    """``videos`` yields ``(video_index, label, views)``; every view is scored, scores averaged per video.

    Under torchrun ``videos`` holds this rank's share (``num_videos`` counts them); the ranks' scores
    are pooled and put in video order before the accuracy is computed.
    """
    model.eval()
    scored: list[tuple[int, int, torch.Tensor, int]] = []  # (video index, label, mean scores, views)
    with Progress(num_videos, "evaluate k400", unit="video") as progress:
        for index, label, views in videos:
            probs = torch.cat([model(views[i:i + batch_views].to(device)).softmax(-1).cpu()
                               for i in range(0, len(views), batch_views)])
            scored.append((index, label, probs.mean(0), len(views)))
            progress.update()
    scored = sorted(gather(scored), key=lambda item: item[0])
    scores = torch.stack([s for _, _, s, _ in scored]) if scored else torch.zeros(0, 1)
    metrics: dict[str, Any] = topk_accuracy(scores, torch.tensor([label for _, label, _, _ in scored], dtype=torch.long))
    metrics["views_per_video"] = scored[-1][3] if scored else 0
    return metrics, scores
