"""Errors of the simulated backend; each says what is wrong and what to do."""

from __future__ import annotations

from deploystate.errors import DeploystateError
from deploystate.ports import BackendError


class SettingsError(DeploystateError, ValueError):
    """A simulated-backend setting has a bad value; nothing was created."""


class WorldError(DeploystateError):
    """A simulated world file cannot be used as asked; it was left unchanged."""


class UnknownDeployment(BackendError, LookupError):
    """No deployment with that id was ever triggered in this world."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class UnknownPackage(BackendError, LookupError):
    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)
