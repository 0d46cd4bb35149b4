"""The one exception type for errors a user can cause."""


class MedbenchError(Exception):
    """A user-caused error: missing file, bad flag, corrupt checkpoint, unknown dataset...

    The message says what was wrong and what to do. The CLI prints it as one line and
    exits with code 2; any other exception is a bug in medbench.
    """


class DiskWriteError(MedbenchError):
    """A file could not be written (a full disk, a file size limit, no permission): trying
    again without the user's help cannot succeed, so work stops at once."""


class MedbenchWarning(UserWarning):
    """Something the user should know but that does not stop the work (e.g. a local data
    file whose MD5 differs from the official one). The CLI prints it as one line."""
