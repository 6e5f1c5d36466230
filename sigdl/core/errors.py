"""The exception every user-facing check raises for bad input, and how its message is kept short.

The CLI turns an `InputError` into a one-line message and exit code 2; the services into
INVALID_ARGUMENT (NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE for the subclasses that say so,
see services/grpc_common/jobservice.py). Keep messages to one line that names what was wrong
and what was expected, quoting a bad value with `short(value)`: a forged file must not turn
into a message of megabytes.

    raise InputError(f"seed={short(seed)}: expected an integer")
"""

MAX_MESSAGE_CHARS = 1000  # an error as stored in a job record and sent in a gRPC status
SHORT_CHARS = 60  # the prefix of a bad value an error message quotes


class InputError(ValueError):
    """Bad input from a user: an unknown name, a value out of range, a malformed file."""


def short(value: object, limit: int = SHORT_CHARS) -> str:
    """`repr(value)`, cut to its first `limit` characters (marked with '...') when longer.

    A huge value is cut before its repr is built when it is a str, bytes or container."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return repr(value[:limit]) + f"...({len(value)} chars)"
    if isinstance(value, list | tuple | dict | set) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line (newlines and runs of blanks become one space), at most `limit`
    characters: the last guard before a message reaches a terminal, a job record or a status."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
