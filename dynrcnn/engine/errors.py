"""The engine's error for bad input (its own module, so that every engine module can raise
it without importing the configs)."""


class UsageError(ValueError):
    """Bad input the user can fix: a flag's value, a missing or wrong file. The message is
    one line naming the flag (`--iterations`) or the file; the CLI prints it without a
    traceback and exits with status 2. A ValueError, so library callers may catch either."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by the user (Ctrl-C): a KeyboardInterrupt whose message says where and
    how to resume. The CLI prints it as one line and exits with 130, as a shell does for
    SIGINT."""
