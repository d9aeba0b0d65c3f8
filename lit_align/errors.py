"""Exceptions that reach the user as a one-paragraph message (the CLI prints them without a traceback)."""


class LitAlignError(Exception):
    """A problem with the user's input or configuration, explained in plain words."""


class DataError(LitAlignError):
    """A bad record or data source. The message names the file, the line (or row) and the field."""

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where, self.field, self.reason = where, field, message
        field_part = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{field_part} {message}")


def exception_chain(exc: BaseException | None):
    """`exc`, then the exceptions it came from (__cause__, else __context__), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
