"""napari-dglandmark: domain-generalised 3D anatomical landmark detection.

The core (``io``, ``protocols``, ``model``, ``cli``) never imports Qt or napari.
"""

__version__ = "0.1.0"
