"""The one exception type for errors a user can cause."""


class MedbenchError(Exception):
    """A user-caused error: missing file, bad flag, corrupt checkpoint, unknown dataset...

    The message says what was wrong and what to do. The CLI prints it as one line and
    exits with code 2; any other exception is a bug in medbench.
    """
