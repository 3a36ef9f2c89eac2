"""User-facing errors.

Every error a user can cause (bad file, bad option, bad checkpoint) is raised as
a subclass of :class:`CaswitError` with a one-line message that names the file
or option and the problem. The CLI prints that line and exits non-zero; only
``--debug`` shows a traceback.
"""


class CaswitError(Exception):
    """Base class of the errors the CLI reports as one line."""

    def __init__(self, *args) -> None:
        # A DataLoader worker's error comes back as "Caught X in DataLoader worker process N.\n
        # Original Traceback ...": keep the original message, the line the user needs.
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            last = args[0].rstrip().splitlines()[-1]
            args = (last.split(": ", 1)[1] if ": " in last else last,)
        super().__init__(*args)


class InputError(CaswitError):
    """An input raster, vector or data set cannot be used."""


class OutputError(CaswitError):
    """An output cannot be written (exists, folder missing, not writable)."""


class CheckpointError(CaswitError):
    """A checkpoint or weights file is missing, corrupt or does not fit."""


class ConfigError(CaswitError):
    """A model name, option or config file is invalid."""


class DatasetError(CaswitError):
    """A data set tree, split file or label raster is invalid."""
