"""The one error type the filter raises for bad input.

The CLI turns it into a one-line message and exit code 2; library callers can catch it
without catching programming errors too.
"""

from __future__ import annotations


class FilterInputError(ValueError):
    """Bad input or options: the message is one line, meant for the user, never a traceback."""
