"""Errors that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations


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


class TrainingDiverged(InputError):
    """A network's loss or outputs became non-finite (NaN or infinity): usually a learning rate too high.

    Raised with the network, the round and what was seen; the run state stays at the last good round.
    """


# The marker a training worker's error carries, so that the driver recognises it through Ray's wrapping.
NON_FINITE_MARKER = "osal_ray: non-finite training loss"
