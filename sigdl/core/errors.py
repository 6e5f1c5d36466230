"""The exception every user-facing check raises for bad input.

The CLI turns it into a one-line message and exit code 2; the services (later) into
INVALID_ARGUMENT. Keep messages to one line that names what was wrong and what was expected.
"""


class InputError(ValueError):
    """Bad input from a user: an unknown name, a value out of range, a malformed file."""
