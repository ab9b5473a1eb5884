"""The one exception users see: a one-line message, exit code 2."""


class WcompressError(Exception):
    """A problem with the user's input or request; printed as one line, exit code 2."""

    def __init__(self, message, path=None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)
