"""The one exception type for problems a user can cause (bad file, bad option)."""

from __future__ import annotations

from os import PathLike


class DGLandmarkError(Exception):
    """A user-facing error; its message is one line naming the file and the problem."""

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        text = message if self.path is None else f"{self.path}: {message}"
        super().__init__(" ".join(str(text).split()))
