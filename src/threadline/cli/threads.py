"""`threadline threads`: show, list, export, sweep and restore stored threads."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from langchain_core.messages import BaseMessage
from rich.table import Table
from rich.text import Text

from threadline.cli.common import checked_thread_id, err, fail, load_settings, out, run, say

threads_app = typer.Typer(
    help="Inspect, export, sweep and restore stored threads.", no_args_is_help=True
)


def message_text(message: BaseMessage) -> str:
    return message.text if isinstance(message.content, list) else str(message.content)


@threads_app.command("show")
def threads_show(thread_id: Annotated[str, typer.Argument(help="The thread to print.")]) -> None:
    """Print a thread's transcript, running summary and last budget telemetry."""
    settings = load_settings(model=False)
    from threadline.assembly import make_graph, thread_naming
    from threadline.checkpointers import open_checkpointer
    from threadline.server.threads import scoped_thread_key

    key = scoped_thread_key(None, checked_thread_id(thread_id), thread_naming(settings))
    config: Any = {"configurable": {"thread_id": key}}

    async def main() -> dict[str, Any]:
        async with open_checkpointer(settings) as saver:
            return (await make_graph(saver, settings).aget_state(config)).values

    values = run(main)
    messages: list[BaseMessage] = values.get("messages", [])
    if not messages:
        raise fail(f"no thread {thread_id!r} in the {settings.checkpointer} store", code=1)
    table = Table("#", "role", "message", show_lines=False)
    for number, message in enumerate(messages, 1):
        table.add_row(str(number), message.type, Text(message_text(message)))
    out.print(table)
    out.print(f"[bold]summary[/] ({values.get('summarized_count', 0)} messages folded):")
    say(values.get("summary") or "(none)")
    if telemetry := values.get("telemetry"):
        say(f"telemetry: {telemetry}")


@threads_app.command("list")
def threads_list(
    user: Annotated[str | None, typer.Option(help="Only this user's threads.")] = None,
    tenant: Annotated[str | None, typer.Option(help="The tenant (with API keys).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
) -> None:
    """List stored threads, most recently updated first."""
    settings = load_settings(model=False)
    from datetime import UTC, datetime

    from threadline.assembly import thread_naming
    from threadline.checkpointers import open_checkpointer
    from threadline.checkpointers.records import RecordQuery, ThreadRecord
    from threadline.checkpointers.sealed_records import SealedRecords

    async def main() -> list[ThreadRecord]:
        async with open_checkpointer(settings) as saver:
            query = RecordQuery(thread_naming(settings).tenant_tag(tenant), user, limit)
            return await SealedRecords.of(saver).alist_thread_records(query)

    def when(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")

    table = Table("thread", "user", "title", "messages", "updated (UTC)", "created (UTC)")
    for r in run(main):
        row = (r.thread_id, r.user_id or "", r.title, str(r.message_count))
        table.add_row(*(Text(cell) for cell in row), when(r.updated_at), when(r.created_at))
    out.print(table)


@threads_app.command("export")
def threads_export(
    thread_id: Annotated[str, typer.Argument(help="The thread to export.")],
    format: Annotated[str, typer.Option(help="`jsonl` or `markdown`.")] = "jsonl",
    tenant: Annotated[str | None, typer.Option(help="The tenant (with API keys).")] = None,
) -> None:
    """Print a whole thread (record, summary, every message) as JSON Lines or Markdown."""
    if format not in ("jsonl", "markdown"):
        raise fail("--format must be jsonl or markdown")
    settings = load_settings(model=False)
    from dataclasses import asdict

    from threadline.assembly import make_graph, thread_naming
    from threadline.checkpointers import open_checkpointer
    from threadline.checkpointers.sealed_records import SealedRecords
    from threadline.server.export import export_lines
    from threadline.server.threads import scoped_thread_key

    key = scoped_thread_key(tenant, checked_thread_id(thread_id), thread_naming(settings))

    async def main() -> tuple[Any, dict[str, Any]]:
        async with open_checkpointer(settings) as saver:
            record = await SealedRecords.of(saver).aget_thread_record(key)
            config: Any = {"configurable": {"thread_id": key}}
            state = await make_graph(saver, settings).aget_state(config)
            return record, state.values

    record, values = run(main)
    if not values.get("messages"):
        raise fail(f"no thread {thread_id!r} in the {settings.checkpointer} store", code=1)
    shown = asdict(record) if record else {"thread_id": thread_id}
    for line in export_lines(format, shown, values):  # type: ignore[arg-type]
        sys.stdout.write(line)


def _as_of(value: str | None) -> float | None:
    """`--as-of`: Unix seconds or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    from datetime import UTC, datetime

    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise fail("--as-of must be Unix seconds or an ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@threads_app.command("sweep")
def threads_sweep(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the expired threads.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(help="Sweep as if it were this time (Unix seconds or ISO 8601)."),
    ] = None,
) -> None:
    """Apply THREADLINE_TTL_STRATEGY to every thread idle past its TTL, in batches of
    THREADLINE_SWEEP_LIMIT, and print what was done (exit 1 if a thread failed or the sweep
    stopped early: cron should tell someone). `--dry-run` counts every expired thread."""
    settings = load_settings(model=False)
    now = _as_of(as_of)
    from rich.progress import Progress

    from threadline.assembly import open_keeper
    from threadline.retention import Sweeper, SweepReport

    async def main() -> SweepReport:
        async with open_keeper(settings) as (keeper, locks):
            sweeper = Sweeper.configured(keeper, locks, settings)
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task(f"sweep ({settings.ttl_strategy})", total=None)
                return await sweeper.sweep(
                    now=now,
                    dry_run=dry_run,
                    max_batches=None,
                    on_thread=lambda record, done: progress.advance(task),
                )

    report = run(main)
    say(report.summary())
    if report.error or report.lease_taken or report.failed:
        raise typer.Exit(1)


@threads_app.command("restore")
def threads_restore(
    thread_id: Annotated[str, typer.Argument(help="The archived thread to bring back.")],
    tenant: Annotated[str | None, typer.Option(help="The tenant (with API keys).")] = None,
) -> None:
    """Bring an archived thread back whole from the archive; the next turn continues it."""
    settings = load_settings(model=False)
    from threadline.assembly import thread_naming
    from threadline.locks import ThreadBusyError
    from threadline.retention import ArchiveError, NoArchiveError, NotArchivedError
    from threadline.server.threads import scoped_thread_key

    key = scoped_thread_key(tenant, checked_thread_id(thread_id), thread_naming(settings))

    from threadline.assembly import open_keeper

    async def main() -> int:
        async with open_keeper(settings) as (keeper, locks):  # noqa: SIM117 (locks first)
            async with locks.hold([key], settings.turn_lock_timeout_seconds):
                return (await keeper.restore(key)).message_count

    try:
        count = run(main)
    except KeyError:
        raise fail(f"no thread {thread_id!r} in the {settings.checkpointer} store", 1) from None
    except NotArchivedError:
        raise fail(f"thread {thread_id!r} is not archived", 1) from None
    except (NoArchiveError, ArchiveError) as exc:
        raise fail(f"cannot restore: {exc}", 1) from None
    except ThreadBusyError:
        raise fail("the thread is busy with a turn; run the command again", 1) from None
    say(f"restored {thread_id} ({count} messages)")
