"""The one exception users see: a one-line message, exit code 2."""


class WcompressError(Exception):
    """A problem with the user's input or request; printed as one line, exit code 2."""

    def __init__(self, message, path=None):
        self.path = str(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class TensorFlowMissing(WcompressError):
    """The command needs TensorFlow, and this environment has none (the base install does not pull it)."""

    def __init__(self):
        super().__init__("this needs TensorFlow (checkpoints, SavedModels, .tflite and running a model do), "
                         "which is not installed: pip install 'wcompress[tensorflow]' (or any tensorflow or "
                         "tensorflow-cpu 2.20 or 2.21)")


class WcompressWarning(UserWarning):
    """Something the user should know although the command succeeds; printed on stderr."""


def warn(message, path=None):
    import warnings

    warnings.warn(WcompressWarning(f"{path}: {message}" if path is not None else message), stacklevel=2)


def short_list(names, limit=5):
    """"a, b, c" — at most `limit` names, then "…": for messages that name what they are about."""
    names = list(names)
    return ", ".join(names[:limit]) + (", …" if len(names) > limit else "")


def root_cause(exc, limit=300):
    """The first line of an exception that says what went wrong, not where (TF's and Keras's
    messages often open with a generic line such as 'Graph execution error:')."""
    generic = ("graph execution error", "traceback", "exception encountered", "error when deserializing")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if not line.lower().rstrip(":. ").startswith(generic) and not line.startswith(
                ("File ", "Detected at node", "Node: ", "[[")):
            return line[:limit]
    return (lines[0] if lines else type(exc).__name__)[:limit]
