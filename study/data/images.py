"""The in-memory form of a set of images, shared by every source, the shard writer and the loaders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images (N, H, W, C) with optional integer labels; `classes` names label values."""

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError("labels and images differ in length")

    def __len__(self) -> int:
        return len(self.images)


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W, C) uint8 to (N, size, size, C) with antialiased bilinear interpolation."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    if not images.flags.writeable or not images.flags.c_contiguous:
        images = np.array(images, copy=True, order="C")
    import torch  # here: image sources register without torch, so a spec is checked without it
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def class_interleaved_order(labels: np.ndarray) -> np.ndarray:
    """Indices that visit classes round-robin, keeping each class's own order.

    The first N images of a surrogate stored in this order are a class-fair subset, so a smaller `count` never
    skews the class mix.
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    # rank of each image within its class decides its round
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(labels)) - starts
    return order[np.lexsort((sorted_labels, rank))]
