"""`threadline import`: move chat histories kept by LangChain's message-history classes in."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from threadline.cli.common import err, fail, load_settings, run, say
from threadline.importing.sessions import SOURCES

SOURCE_HELP = "One of: " + ", ".join(SOURCES) + "."


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def import_command(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP, show_default=False)],
    url: Annotated[
        str, typer.Option(help="Where the history is: a database URL, redis://, an endpoint.")
    ],
    table: Annotated[
        str | None, typer.Option(help="Table (postgres-, sql-, dynamodb-history).")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection (firestore-history).")] = None,
    key_prefix: Annotated[
        str | None,
        typer.Option(help="Key prefix (redis-history; default both `chat:` and `message_store:`)."),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="The tenant the threads belong to (with API keys).")
    ] = None,
    user_from: Annotated[
        str | None,
        typer.Option(help="The source field naming each session's user (the thread's owner)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be imported.")
    ] = False,
) -> None:
    """Import every session of a chat-message history as a thread (session_id → thread_id).

    Run it again at will: threads get only the messages they lack, nothing is duplicated, and
    an interrupted run resumes. Exit 1 if a session failed or the store is unreachable."""
    spec = SOURCES.get(source)
    if spec is None:
        raise fail(f"unknown source {source!r}: one of {', '.join(SOURCES)}")
    given = {"table": table, "collection": collection, "key_prefix": key_prefix}
    for option, value in given.items():
        if value is not None and option != spec.option:
            wanted = _flag(spec.option)
            raise fail(f"{_flag(option)} does not apply to {source} (it takes {wanted})")
    location = given[spec.option] or spec.default
    if location is None and spec.required:
        raise fail(f"{source} needs {_flag(spec.option)}")
    if tenant is not None:
        from threadline.server.threads import TENANT_PATTERN

        if not TENANT_PATTERN.fullmatch(tenant):
            raise fail("--tenant must be 1-128 characters of letters, digits and . _ : @ -")
    settings = load_settings(model=False)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from threadline.assembly import make_graph, protector, thread_naming
    from threadline.checkpointers import open_checkpointer
    from threadline.importing import (
        ImportReport,
        SourceError,
        SourceUnreachableError,
        ThreadImporter,
        open_reader,
    )
    from threadline.locks import open_turn_locks

    progress_report: list[ImportReport] = []  # what was done, should the run stop midway

    async def main() -> ImportReport:
        async with (
            open_reader(source, url, location) as reader,
            open_turn_locks(settings) as locks,
            open_checkpointer(settings) as saver,
        ):
            importer = ThreadImporter(
                make_graph(saver, settings),
                locks,
                tenant=tenant,
                naming=thread_naming(settings),
                protector=protector(settings),
                user_from=user_from,
                dry_run=dry_run,
                lock_timeout=settings.turn_lock_timeout_seconds,
            )
            progress_report.append(importer.report)
            total = await reader.count_sessions()
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=err, transient=True) as progress:
                task = progress.add_task(f"import {source}", total=total)
                sessions = reader.sessions()
                while True:
                    try:
                        session = await anext(sessions)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:  # the source went away mid-run
                        raise SourceUnreachableError(
                            f"reading {source} failed: {_reason(exc)}"
                        ) from None
                    await importer.add(session)
                    progress.advance(task)
            return importer.report

    try:
        report = run(main)
    except SourceUnreachableError as exc:
        _partial(progress_report)
        raise fail(str(exc), code=1) from None
    except SourceError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # the deployment's store, say: one line, never a traceback
        _partial(progress_report)
        raise fail(f"import stopped: {_reason(exc)}", code=1) from None
    say(report.summary())
    if report.failed:
        raise typer.Exit(1)


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _partial(reports: list[Any]) -> None:
    """What a stopped run did: its threads are whole; run the command again to resume."""
    if reports and reports[0].sessions:
        say(reports[0].summary())
        say("stopped early: run the command again to resume")
