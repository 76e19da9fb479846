"""User errors: the command line turns these into one line on stderr and exit status 2."""


class UserError(Exception):
    """Bad input from the user (arguments, data, a tracking server): report it, no traceback."""
