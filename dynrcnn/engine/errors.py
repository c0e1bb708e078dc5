"""The engine's error for bad input (its own module, so that every engine module can raise
it without importing the configs)."""


class UsageError(ValueError):
    """Bad input the user can fix: a flag's value, a missing or wrong file. The message is
    one line naming the flag (`--iterations`) or the file; the CLI prints it without a
    traceback and exits with status 2. A ValueError, so library callers may catch either."""
