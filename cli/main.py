"""``bulkops``: bulk delete, export and reprocess of a video library, from a terminal.

Every reporting command takes ``--json`` and then prints exactly one JSON document
on stdout; progress and logs go to stderr. Exit status: 0 done, 1 the operation ended
partial/failed/cancelled, 2 refused before any flow run (CONTRACT.md). A refusal is one
exception type carrying a contract code (``RequestError``), mapped to exit 2 here, once.

Commands live in one module per group: ``cli/operations.py`` (delete, export,
reprocess), ``cli/status.py``, ``cli/library.py`` (init, seed, search, demo); what a
person sees is drawn by ``cli/render.py``. They all go through ``service/``.
"""

from __future__ import annotations

import sys

import click
import typer

from cli import library, operations, service, status
from cli.app import app, emit, err

# In the order a user meets them (`bulkops --help`).
for _command in (library.init, library.seed, operations.delete, operations.export, operations.reprocess,
                 library.search, status.status, status.list_operations, status.cancel, operations.retry, operations.cleanup,
                 operations.restore,
                 service.token, service.serve,
                 library.demo):
    app.command(name=_command.__name__.replace("list_operations", "list"))(_command)

try:  # typer >= 0.20 carries its own copy of click, with its own exception classes
    from typer._click import exceptions as _tclick

    _USAGE_ERRORS: tuple[type[Exception], ...] = (click.UsageError, _tclick.UsageError)
    _NO_ARGS: tuple[type[Exception], ...] = (_tclick.NoArgsIsHelpError,)
except ImportError:  # pragma: no cover - older typer uses click itself
    _USAGE_ERRORS = (click.UsageError,)
    _NO_ARGS = ()
_EXITS: tuple[type[BaseException], ...] = (click.exceptions.Exit, typer.Exit)
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort)


def main(argv: list[str] | None = None) -> int:
    from service.requests import RequestError

    args = list(sys.argv[1:] if argv is None else argv)
    json_out = "--json" in args
    previous = _soft_sigterm()
    try:
        # With standalone_mode=False, click returns an Exit's code instead of exiting.
        code = app(args=args, prog_name="bulkops", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except _EXITS as exc:
        return exc.exit_code
    except _ABORTS:
        err.print("Aborted.")
        return 1
    except _NO_ARGS as exc:
        err.print(exc.ctx.get_help() if exc.ctx else "Usage: bulkops COMMAND --help", markup=False)
        return 2
    except _USAGE_ERRORS as exc:
        return refuse("usage", exc.format_message(), json_out, ctx=exc.ctx)
    except RequestError as exc:
        return refuse(exc.code, exc.message, json_out)
    except Exception as exc:  # noqa: BLE001 - the last resort: --json still gets one document
        from service.environment import as_refusal

        known = as_refusal(exc)
        if known is not None:  # bad settings, database, storage or Prefect server: nothing ran
            return refuse(known.code, known.message, json_out)
        # A bug of ours. The traceback is for a developer (stderr); --json still gets
        # its one document.
        import traceback

        traceback.print_exc(file=sys.stderr)
        if json_out:
            emit({"error": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        else:
            err.print(f"Error: unexpected {type(exc).__name__}: {exc}", markup=False)
        return 1
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _soft_sigterm():
    """SIGTERM acts as Ctrl-C: a run stops softly and prints its result, and whatever
    ends the command runs its exit handlers (a temporary Prefect server stops with it).
    While a flow runs, Prefect's own handler takes SIGTERM to the flow (flows.operation)."""
    import signal

    def interrupt(_signum, _frame) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        return None


def refuse(code: str, message: str, json_out: bool, ctx=None) -> int:
    if json_out:
        emit({"error": code, "message": message})
    else:
        if ctx is not None:
            err.print(ctx.get_usage(), markup=False)
        err.print(f"Error: {message}", markup=False)
    return 2


if __name__ == "__main__":
    sys.exit(main())
