"""Shared command-line pieces: a parser whose errors are one line, argument types, the one-line-error-and-exit-2
wrapper, and a quick process exit."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from bench.core import interrupts
from bench.errors import UserError, first_line
from variants.registry import REGISTRY

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line with a pointer to --help instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_where(text: str, ok: Callable[[int], bool], wrong: str, accepted: str) -> int:
    """``text`` as an integer for which ``ok`` holds; else argparse's error "<value> <wrong>; give <accepted>"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give {accepted}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} {wrong}; give {accepted}")
    return value


def positive_int(text: str) -> int:
    return _int_where(text, lambda v: v >= 1, "is not positive", "a positive integer")


def nonneg_int(text: str) -> int:
    return _int_where(text, lambda v: v >= 0, "is negative", "0 or more")


def seed_int(text: str) -> int:
    return _int_where(text, lambda v: 0 <= v < 2**63, "is out of range", "a seed from 0 to 2**63-1")


def name_arg(text: str) -> str:
    """A non-blank name (an MLflow experiment)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the name is empty; give a name")
    return text


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a positive number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite number")
    return value


def listof(kind: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """An argparse type: a comma-separated list of ``kind`` values, duplicates dropped."""

    def parse(text: str) -> list[T]:
        items = [s.strip() for s in text.split(",")]
        if any(not s for s in items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give {what} separated by commas")
        values: list[T] = []
        for s in items:
            try:
                value = kind(s)
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise argparse.ArgumentTypeError(f"{s!r} in {text!r}: {e}; give {what} separated by commas") from None
            if value not in values:
                values.append(value)
        return values

    return parse


def variant_name(text: str) -> str:
    if text not in REGISTRY:
        raise argparse.ArgumentTypeError(f"unknown variant; choose from {', '.join(REGISTRY)}")
    return text


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return text

    return parse


def add_compile(p: argparse.ArgumentParser, *, resume: bool = False) -> None:
    """--compile (bench.training.steps); with ``resume``, also --no-compile, and unset keeps the run's own."""
    p.add_argument("--compile", action=argparse.BooleanOptionalAction if resume else "store_true",
                   default=None if resume else False,
                   help="the whole training step (forward, gradient, Adam) as one torch.compile graph: faster "
                        "epochs after compiling at the start (tens of seconds the first time on a machine, a few "
                        "after: cached on disk); the last bits differ from eager"
                        + ("; default off; a resume keeps the run's own" if resume else ""))


TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"


def add_common(p: argparse.ArgumentParser, *, experiment: str | None = None, data: bool = True,
               device: bool = True, progress: bool = False) -> None:
    """The flags the commands share, worded once: the data, the device, the experiment, the store, progress bars."""
    if data:
        p.add_argument("--data-dir", metavar="DIR", help="folder with the four MNIST IDX files (default: bundled)")
    if device:
        p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    if experiment is not None:
        p.add_argument("--experiment", type=name_arg, default=experiment, help=f"MLflow experiment ({experiment})")
    p.add_argument("--tracking-uri", metavar="URI", help=TRACKING_HELP)
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def quiet_libraries() -> None:
    """Keep MLflow's and alembic's INFO chatter and download bars off the user's terminal."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # `import mlflow` sets its logger's level from this variable, undoing the setLevel below when mlflow is imported
    # after this runs (it is, lazily): without it, log_model's pickle warning reached every run's terminal.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # MLflow logs every database error it then raises (with its traceback) at ERROR, e.g. SQLite's "database is
    # locked" while a lease's heartbeat writes: the exception itself reaches our one-line handlers.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", message=r".*dataset source can be interpreted.*")


def load_plugin_flags(argv: list[str]) -> list[str]:
    """Load the modules of every ``--plugin MODULE`` (variants.plugins) and return the arguments without them."""
    from variants import plugins

    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--plugin" or arg.startswith("--plugin="):
            path = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            if not path:
                raise UserError("--plugin needs a module path, e.g. --plugin my_package.variants")
            plugins.load_module(path)
            i += 1 if "=" in arg else 2
        else:
            rest.append(arg)
            i += 1
    return rest


PIPE_CLOSED = 128 + 13  # the status of a process that SIGPIPE ended, as a C tool in ``... | head`` would show


def stdout_gone() -> int:
    """The reader of stdout has gone (``... | head -n 1``): point stdout at /dev/null, so that what is still
    buffered, and the interpreter's flush at exit, go nowhere instead of raising BrokenPipeError again (the
    recipe of Python's signal docs, "Note on SIGPIPE"). Returns the exit status to give."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return PIPE_CLOSED


def main_guard(main: Callable[[list[str] | None], int], prog: str) -> Callable[[list[str] | None], int]:
    """Run ``main``; a UserError, or a plugin that could not be loaded, becomes one line on stderr and exit status 2,
    a stray Ctrl-C one line and 130, a closed stdout nothing and 141. Called with no argv (the process's own
    command line), signals are held from its return to the exit."""

    def guarded(argv: list[str] | None, own: bool) -> int:
        from bench.tracking import locks
        from variants.plugins import FAILURES

        quiet_libraries()
        locks.set_waiting(False)
        try:
            args = load_plugin_flags(list(sys.argv[1:] if own else argv))
            if FAILURES:
                raise UserError(f"{FAILURES[0]}; fix or uninstall it (see docs/plugins.md)")
            return main(args)
        except UserError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            print(f"\n{prog}: interrupted ({e or 'SIGINT'})", file=sys.stderr)
            return 130
        except Exception as e:
            if not type(e).__module__.startswith("mlflow."):
                raise
            # MLflow refused something it was given (a name, a value) or its store failed: one line, not a
            # traceback. The commands' own checks catch what they know of before this.
            from bench.tracking.sqlite_checks import locked_store

            print(f"{prog}: error: {locked_store(e) or 'MLflow: ' + first_line(e, 300)}", file=sys.stderr)
            return 2

    def wrapped(argv: list[str] | None = None) -> int:
        own = argv is None  # the process's own command line: this call ends the process
        try:
            try:
                return guarded(argv, own)
            finally:
                sys.stdout.flush()  # here, where a closed stdout is caught, not in the interpreter's exit
        except BrokenPipeError:
            return stdout_gone()
        finally:
            if own:
                interrupts.ending_for_exit()

    return wrapped


def exit_process(status: int) -> NoReturn:
    """End the process without the interpreter's module-by-module teardown, which takes 1-2 s once torch and
    MLflow are loaded and does nothing for us: every write is committed by then. atexit callbacks still run
    (with signals held, see main_guard)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader gone since main_guard's flush, or a closed stream
            status = status or PIPE_CLOSED
    os._exit(status)
