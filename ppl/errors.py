"""Typed errors shared by the library and the CLI."""


class PPLError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(PPLError, ValueError):
    """User input (a file, a line, an argument) is malformed; the message names the problem."""
