"""The one exception type a stage reports as a single line (no traceback) and exit status 1."""


class UserError(Exception):
    """A problem with the user's files, params or environment; the message is one line saying what is
    wrong and what to do. Anything else that escapes a stage is a bug and keeps its traceback."""
