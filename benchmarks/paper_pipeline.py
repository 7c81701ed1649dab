"""The published pipeline's inference path, for speed comparison only (weights untrained).

Whole-volume order-3 resize to 128^3 (scipy), window to the 5th-95th percentiles, width-32
residual U-Net, integer argmax per heatmap, back to mm through the resize factor and spacing.
    python benchmarks/paper_pipeline.py IMAGE
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy import ndimage

from napari_dglandmark.io import read_volume
from napari_dglandmark.model.decode import decode
from napari_dglandmark.model.networks import ResUNet3D


def detect_paper(path: str, landmarks: int = 32) -> np.ndarray:
    volume = read_volume(path)
    arr = volume.array.astype(np.float32)
    lo, hi = np.percentile(arr, [5, 95])
    arr = np.clip((arr - lo) / (hi - lo), 0, 1)
    factors = np.array([128, 128, 128]) / np.array(arr.shape)
    small = ndimage.zoom(arr, factors, order=3).astype(np.float32)
    net = ResUNet3D(1, landmarks, base_width=32, depth=3).eval()
    with torch.inference_mode():
        maps = net(torch.as_tensor(small)[None, None])[0]
    index, _ = decode(maps, "argmax", expected_peak=255.0)
    kji_to_ijk = index.numpy() / factors[::-1]
    return volume.index_to_physical(kji_to_ijk)


if __name__ == "__main__":
    out = detect_paper(sys.argv[1])
    print(f"{len(out)} landmarks")
