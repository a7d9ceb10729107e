"""The one exception type users see. The CLI prints its message and exits non-zero, no traceback."""


class EdgekitError(Exception):
    """A problem the user can fix; the message names it and says how."""
