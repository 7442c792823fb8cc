"""The one exception type for mistakes a user can make and fix (bad input, missing run, ...).

The CLI prints its message as one line and exits with status 2, without a traceback unless
`debug=true` asks for one.
"""


class UserError(Exception):
    """An error caused by the user's input; the message says what to change."""
