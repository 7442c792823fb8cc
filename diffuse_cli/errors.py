"""The one exception type for mistakes a user can make and fix (bad input, missing run, ...).

The CLI prints its message as one line and exits with status 2, without a traceback unless
`debug=true` asks for one.
"""


class UserError(Exception):
    """An error caused by the user's input; the message says what to change."""


class Interrupted(UserError):
    """Training stopped on a signal after writing a checkpoint. The CLI exits with
    `exit_code` (128 + the signal number, as shells report a signal) instead of 2, so schedulers
    and scripts can tell a requested stop from a failure."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
