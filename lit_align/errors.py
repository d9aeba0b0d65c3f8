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


# errno names that mean "this place cannot be written": the user chooses another folder or frees space
_WRITE_ERRNOS = ("EROFS", "EACCES", "EPERM", "ENOSPC", "EDQUOT")


def write_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc` (itself, its cause or its context) that says a file could not be written: a
    read-only file system, no permission, a full disk. torch.save on a full disk raises a RuntimeError ("unexpected
    pos") while handling the OSError, so the whole chain is searched."""
    import errno as errnos

    codes = {getattr(errnos, name) for name in _WRITE_ERRNOS if hasattr(errnos, name)}
    return next((e for e in exception_chain(exc) if isinstance(e, OSError) and e.errno in codes), None)


def write_error_sentence(e: OSError) -> str:
    """One paragraph for a write that failed: what, where, why, and what to do."""
    import errno as errnos

    full = errnos.errorcode.get(e.errno) in ("ENOSPC", "EDQUOT")
    return (f"could not write{f' {e.filename}' if e.filename else ''}: {e.strerror} (errno {e.errno}). "
            + ("Free space there" if full else "Choose a writable folder")
            + " (logs: --trainer.logger.init_args.save_dir DIR; checkpoints: --checkpoint.dirpath DIR; the final model:"
              " --export.dirpath DIR), then run again (or resume with --ckpt_path last).")
