"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""


class LossbenchError(Exception):
    """A problem with the user's input (file, config value, path) that a traceback would not help with."""


def require(condition: bool, message: str) -> None:
    """Raise LossbenchError(message) unless condition holds."""
    if not condition:
        raise LossbenchError(message)
