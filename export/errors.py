"""Exceptions of the export stage; all are `DLinkError`, so the CLI prints one line."""

from __future__ import annotations

from dlink.errors import DLinkError


class ExportError(DLinkError):
    """The export could not be completed; nothing was written."""


class OutputExistsError(ExportError):
    """The output folder exists and ``force`` was not given."""


class GateError(ExportError):
    """An int8 artifact failed the parity gate; ``results`` holds every artifact's checks."""

    def __init__(self, message: str, results: list):
        super().__init__(message)
        self.results = results
