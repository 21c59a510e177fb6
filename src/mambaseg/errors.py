"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class MambasegError(Exception):
    """An error caused by the user's input (bad path, bad file, bad option).

    The message must say what is wrong and name the file or option concerned.
    """


class DataError(MambasegError):
    """A data file or folder is missing, unreadable or inconsistent."""


class CheckpointError(MambasegError):
    """A checkpoint is missing, truncated or belongs to another model."""
