"""The one exception type for mistakes a user can fix (missing data, bad flags, wrong checkpoint).

Scripts catch it, print its message on one line to stderr and exit non-zero.
"""


class UserError(Exception):
    """A problem with the user's input, described by a message that says what to do."""
