"""The image warning judges structural resolution: real 2 mm heads and anisotropic structural protocols pass,
EPI-like diffusion/functional resolutions are warned."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark.io import Volume, read_volume
from napari_dglandmark.io.volume import Geometry
from napari_dglandmark.model import quality
from napari_dglandmark.model.shape import load_shape_model
from napari_dglandmark.sample import SAMPLE_VOLUME
from tests.conftest import SHARED_DATA, T1W, require_shared


def _resampled(volume: Volume, spacing: tuple[float, float, float]) -> Volume:
    import SimpleITK as sitk

    from napari_dglandmark.io.volume import volume_from_sitk, volume_to_sitk

    image = volume_to_sitk(volume)
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                        image.GetDirection(), 0.0, sitk.sitkFloat32)
    return volume_from_sitk(out)


def test_the_bundled_2mm_sample_is_not_warned():
    shape = load_shape_model("afids32")
    assert quality.image_statistics_warning(read_volume(SAMPLE_VOLUME), None, shape) == ""


@pytest.mark.shared_data
@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (1.0, 1.0, 3.0), (0.4, 0.4, 1.5), (2.2, 2.2, 2.2)])
def test_structural_resolutions_of_the_template_are_not_warned(spacing):
    shape = load_shape_model("afids32")
    volume = _resampled(read_volume(require_shared(T1W)), spacing)
    assert quality.image_statistics_warning(volume, None, shape) == ""


@pytest.mark.shared_data
def test_real_2mm_ixi_heads_are_not_warned():
    shape = load_shape_model("afids32")
    paths = sorted(require_shared(SHARED_DATA / "real-heads-ixi").glob("*.nii.gz"))[:4]
    assert paths
    for path in paths:
        assert quality.image_statistics_warning(read_volume(path), None, shape) == "", path.name


@pytest.mark.parametrize("spacing", [(2.5, 2.5, 2.5), (3.0, 3.0, 3.0), (2.4, 2.4, 4.0), (3.5, 3.5, 2.0)])
def test_epi_like_resolutions_are_warned(spacing):
    shape = load_shape_model("afids32")
    rng = np.random.default_rng(1)
    size = tuple(int(round(220 / s)) for s in spacing[::-1])  # z, y, x covering 220 mm
    head = np.zeros(size, np.float32)
    inner = tuple(slice(int(0.15 * n), int(0.85 * n)) for n in size)
    head[inner] = 100 + rng.normal(size=head[inner].shape)
    volume = Volume(head, Geometry(size, spacing, (0.0, 0.0, 0.0)))
    assert "resolution" in quality.image_statistics_warning(volume, None, shape)
