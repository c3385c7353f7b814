"""Errors that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations

import reprlib
from typing import Any

MAX_SHOWN = 200  # characters of a value an error message shows at most
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring = _REPR.maxother = MAX_SHOWN


class InputError(ValueError):
    """Bad user input (config, data, label file, checkpoint), named by the field it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):
        # Rebuilt from (field, message), not from str(self): the error crosses processes (a trajectory's Ray task).
        if type(self).__init__ is not InputError.__init__:
            return super().__reduce__()
        return (self.__class__, (self.field, self.message), self.__dict__)


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, at most ``MAX_SHOWN`` characters: a huge value is cut short
    (without building its whole repr first)."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def shown_error(exc: BaseException) -> str:
    """An exception's text for an error message, at most ``MAX_SHOWN`` characters."""
    text = str(exc)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def require(condition: bool, field: str, message: str) -> None:
    """InputError(field, message) unless ``condition``: one check of one config key."""
    if not condition:
        raise InputError(field, message)


class CorruptFile(InputError):
    """A file of a run's state on disk (a staged label file, request.json, state.json, a lock, ...) that
    cannot be read as what it must hold. ``field`` is the file's path and the message says what is
    wrong and what to do; the service answers 503 (the run cannot go on until someone fixes it)."""


class TrainingDiverged(InputError):
    """A network's loss or outputs became non-finite (NaN or infinity): usually a learning rate too high.

    Raised with the network, the round and what was seen; the run state stays at the last good round.
    """


# The marker a training worker's error carries, so that the driver recognises it through Ray's wrapping.
NON_FINITE_MARKER = "osal_ray: non-finite training loss"
