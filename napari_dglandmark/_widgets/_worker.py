"""Run, progress and cancel for a dock widget whose core work runs in a napari worker thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class WorkerRun:
    """Mixin for a QWidget with a ``run_button``; ``_run_controls`` makes ``cancel_button``, ``progress``
    (a QProgressBar), ``status`` (a QLabel), ``_cancel`` (a threading.Event), ``progress_log`` and ``worker``."""

    run_button: Any

    def _run_controls(self, button: Any) -> Any:
        """Make the cancel button, progress bar and status line; returns the row of ``button`` and Cancel."""
        from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton

        self.worker = None
        self.progress_log: list[tuple[int, int]] = []
        self._cancel = threading.Event()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(button)
        row.addWidget(self.cancel_button)
        self.cancel_button.clicked.connect(self.cancel)
        return row

    def _begin(self, text: str) -> None:
        """Show that work starts: busy bar until the first step reports, run off, cancel on."""
        self._cancel.clear()
        self.progress_log = []
        self.progress.setRange(0, 0)
        self.status.setText(text)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

    def _launch(self, worker: Any, on_done: Callable[[Any], None]) -> Any:
        worker.returned.connect(on_done)
        worker.finished.connect(self._reset)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running work to stop at its next step."""
        self._cancel.set()
        self.status.setText("cancelling...")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_log.append((done, total))
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _reset(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
