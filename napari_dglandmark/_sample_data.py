"""napari sample data: the bundled 2 mm AFIDs T1w template with its 32 ground-truth landmarks."""

from __future__ import annotations

from .layers import LayerDataTuple
from .sample import SAMPLE_LANDMARKS, SAMPLE_VOLUME

#: ``metadata[SAMPLE_KEY]`` marks the sample's layers: the Detect widget retires them when a scan opens
SAMPLE_KEY = "dglandmark_sample"


def afids_t1w() -> list[LayerDataTuple]:
    """Image layer (2 mm T1w, world = LPS mm reversed) and its 32 AFIDs as a points layer."""
    from ._reader import read_landmark_layer, read_volume_layer

    image = read_volume_layer(str(SAMPLE_VOLUME))
    image[1]["name"] = "afids_t1w"
    image[1]["metadata"][SAMPLE_KEY] = True
    points = read_landmark_layer(str(SAMPLE_LANDMARKS))
    points[1]["name"] = "afids_t1w landmarks"
    points[1]["metadata"]["image"] = str(SAMPLE_VOLUME)
    points[1]["metadata"][SAMPLE_KEY] = True
    return [image, points]
