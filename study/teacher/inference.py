"""The teacher's forward passes: normalisation, logits and predicted classes, always in eval mode."""

from __future__ import annotations

import torch


def normalise(images_uint8_nchw: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=images_uint8_nchw.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images_uint8_nchw.device).view(1, -1, 1, 1)
    return (images_uint8_nchw.float() / 255.0 - m) / s


@torch.no_grad()
def predict_classes(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """Predicted classes (int64, host) of uint8 (N, C, H, W) host images, streamed in `batch_size` batches."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        batch = normalise(images[i : i + batch_size].to(device, non_blocking=True), mean, std)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(model(batch).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of `model` on normalised inputs, in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x).argmax(1) == y).float().mean().item()
