"""The errors every layer may raise: a UserError becomes one line on stderr and exit status 2."""


class UserError(Exception):
    """Bad input from the user (arguments, data, a tracking server): report it, no traceback."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run ends FAILED with this as its reason."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type's name), cut to ``limit`` characters: what a one-line
    error quotes of a library's multi-line message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says memory ran out: Python's MemoryError, torch's OutOfMemoryError (CUDA, MPS), or the
    RuntimeError of torch's CPU allocator."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
