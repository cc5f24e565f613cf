"""Top-1 / top-5 accuracy with multi-view testing: softmax scores averaged over every view of a video."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from frozenrep.progress import Progress


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
    """``videos`` yields ``(video_index, label, views)``; every view is scored, scores averaged per video."""
    model.eval()
    all_scores, labels = [], []
    with Progress(num_videos, "evaluate k400", unit="video") as progress:
        for _, label, views in videos:
            probs = torch.cat([model(views[i:i + batch_views].to(device)).softmax(-1).cpu()
                               for i in range(0, len(views), batch_views)])
            all_scores.append(probs.mean(0))
            labels.append(label)
            progress.update()
    scores = torch.stack(all_scores) if all_scores else torch.zeros(0, 1)
    metrics: dict[str, Any] = topk_accuracy(scores, torch.tensor(labels, dtype=torch.long))
    metrics["views_per_video"] = len(views) if all_scores else 0
    return metrics, scores
