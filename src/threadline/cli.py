"""The `threadline` command: serve, chat in the terminal, inspect threads, run dev services."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from langchain_core.messages import BaseMessage, HumanMessage
from rich.console import Console
from rich.table import Table
from rich.text import Text

from threadline.settings import Settings, SettingsError

if TYPE_CHECKING:
    from threadline.locks import TurnLocks
    from threadline.retention import ThreadKeeper

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
threads_app = typer.Typer(
    help="Inspect, export, sweep and restore stored threads.", no_args_is_help=True
)
services_app = typer.Typer(
    help="Throwaway Redis and Postgres for development (no Docker).", no_args_is_help=True
)
users_app = typer.Typer(help="Forget users.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)
app.add_typer(threads_app, name="threads")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(services_app, name="services")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

USAGE_ERROR = 2


def say(text: str) -> None:
    """Print user or model text verbatim (no rich markup: `[turn 1]` is not a style)."""
    out.print(text, markup=False, highlight=False)


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False)
    return typer.Exit(code)


def load_settings(*, model: bool = True) -> Settings:
    """Settings from the environment, checked; a bad one ends the command with one line.

    Commands that only read stored threads pass `model=False`: they run the offline model."""
    try:
        settings = Settings.from_env().check(model=model)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    return settings if model else settings.model_copy(update={"model": "fake"})


def checked_thread_id(thread_id: str) -> str:
    from threadline.server.threads import THREAD_ID_PATTERN

    if not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise fail("THREAD_ID must be 1-128 characters of letters, digits and . _ : @ -")
    return thread_id


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the agent over HTTP (LangServe routes at /agent, chat playground at /chat)."""
    import uvicorn

    settings = load_settings()
    if workers > 1 and settings.checkpointer in ("memory", "sqlite"):
        raise fail(
            f"--workers {workers} needs a shared store and thread lock: "
            "THREADLINE_CHECKPOINTER=postgres, redis or tiered "
            f"({settings.checkpointer} serves from one process)"
        )
    out.print(
        f"threadline on http://{host}:{port}  model={settings.model} "
        f"checkpointer={settings.checkpointer}  playground http://{host}:{port}/chat/playground/",
        highlight=False,
    )
    if workers > 1:  # the workers' metrics meet in one directory, read by /metrics
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="threadline-metrics-")
    from threadline.observability.logs import logging_config

    uvicorn.run(
        "threadline.server.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        log_config=logging_config(settings.log_level, settings.log_format),
        http="threadline.server.connections:GuardedHttpToolsProtocol",
        timeout_keep_alive=int(max(settings.keep_alive_seconds, 1)),
    )


def _text(message: BaseMessage) -> str:
    return message.text if isinstance(message.content, list) else str(message.content)


@app.command()
def chat(thread_id: Annotated[str, typer.Argument(help="The conversation to continue.")]) -> None:
    """Talk to the agent in the terminal; the thread continues across runs. Ctrl-D quits."""
    settings = load_settings()  # before importing the graph, which reads settings too
    config: Any = {"configurable": {"thread_id": checked_thread_id(thread_id)}}
    from threadline.assembly import make_graph, protector
    from threadline.checkpointers import open_checkpointer

    interactive = sys.stdin.isatty()

    from threadline.server.turns import TurnRunner

    async def main() -> None:
        async with open_checkpointer(settings) as saver:
            graph = make_graph(saver, settings)
            runner = TurnRunner(  # as served: stored whole, with the record, protected
                graph,
                protector=protector(settings),
                model_sees_protected=settings.pii_model_sees == "redacted",
            )
            turns = len((await graph.aget_state(config)).values.get("messages", []))
            say(f"thread {thread_id}: {turns} messages so far. Ctrl-D to quit.")
            while True:
                try:
                    line = input("you> " if interactive else "")
                except EOFError:
                    break
                if not line.strip():
                    continue
                if line.strip() in ("/quit", "/exit"):
                    break
                result = await runner.invoke({"messages": [HumanMessage(line)]}, config)
                say(f"agent> {_text(result['messages'][-1])}")

    run(main)


@threads_app.command("show")
def threads_show(thread_id: Annotated[str, typer.Argument(help="The thread to print.")]) -> None:
    """Print a thread's transcript, running summary and last budget telemetry."""
    settings = load_settings(model=False)
    config: Any = {"configurable": {"thread_id": checked_thread_id(thread_id)}}
    from threadline.assembly import make_graph
    from threadline.checkpointers import open_checkpointer

    async def main() -> dict[str, Any]:
        async with open_checkpointer(settings) as saver:
            return (await make_graph(saver, settings).aget_state(config)).values

    values = run(main)
    messages: list[BaseMessage] = values.get("messages", [])
    if not messages:
        raise fail(f"no thread {thread_id!r} in the {settings.checkpointer} store", code=1)
    table = Table("#", "role", "message", show_lines=False)
    for number, message in enumerate(messages, 1):
        table.add_row(str(number), message.type, Text(_text(message)))
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

    from threadline.checkpointers import open_checkpointer
    from threadline.checkpointers.records import KeepsThreadRecords, RecordQuery, ThreadRecord

    async def main() -> list[ThreadRecord]:
        async with open_checkpointer(settings) as saver:
            assert isinstance(saver, KeepsThreadRecords)
            return await saver.alist_thread_records(RecordQuery(tenant or "", user, limit))

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

    from threadline.assembly import make_graph
    from threadline.checkpointers import open_checkpointer
    from threadline.checkpointers.records import KeepsThreadRecords
    from threadline.server.export import export_lines
    from threadline.server.threads import scoped_thread_key

    key = scoped_thread_key(tenant, checked_thread_id(thread_id))

    async def main() -> tuple[Any, dict[str, Any]]:
        async with open_checkpointer(settings) as saver:
            assert isinstance(saver, KeepsThreadRecords)
            record = await saver.aget_thread_record(key)
            config: Any = {"configurable": {"thread_id": key}}
            state = await make_graph(saver, settings).aget_state(config)
            return record, state.values

    record, values = run(main)
    if not values.get("messages"):
        raise fail(f"no thread {thread_id!r} in the {settings.checkpointer} store", code=1)
    shown = asdict(record) if record else {"thread_id": thread_id}
    for line in export_lines(format, shown, values):  # type: ignore[arg-type]
        sys.stdout.write(line)


@asynccontextmanager
async def opened_keeper(settings: Settings) -> AsyncIterator[tuple[ThreadKeeper, TurnLocks]]:
    """Retention's operations on the configured store, and the server's turn locks, so that
    what a command does to a thread waits for a turn a server is running on it."""
    from threadline.assembly import make_graph
    from threadline.audit import open_audit_log
    from threadline.checkpointers import open_checkpointer
    from threadline.locks import open_turn_locks
    from threadline.retention import ThreadKeeper, open_archive

    async with open_turn_locks(settings) as locks, open_checkpointer(settings) as saver:
        graph = make_graph(saver, settings)
        yield (
            ThreadKeeper(graph, open_archive(settings.archive_url), open_audit_log(settings)),
            locks,
        )


@users_app.command("erase")
def users_erase(
    user_id: Annotated[str, typer.Argument(help="The user whose threads to erase.")],
    tenant: Annotated[str | None, typer.Option(help="The tenant (with API keys).")] = None,
) -> None:
    """Erase every thread of a user from every store and the archive, and print the receipt.

    Each thread is erased under the same turn lock the server takes (postgres, tiered, redis),
    so a turn a server is running on it finishes first; a thread still busy after
    `THREADLINE_TURN_LOCK_TIMEOUT_SECONDS` stops the command (exit 1), the others erased.
    Threads on legal hold are kept and named."""
    settings = load_settings(model=False)
    checked_thread_id(user_id)  # the same alphabet
    from threadline.locks import ThreadBusyError
    from threadline.retention import NoArchiveError
    from threadline.server.erasure import erase_thread, user_threads

    async def main() -> tuple[int, str, list[str]]:
        import uuid

        erased: list[str] = []
        held: list[str] = []
        async with opened_keeper(settings) as (keeper, locks):
            try:
                for record in await user_threads(keeper, tenant, user_id):
                    async with locks.hold([record.thread_key], settings.turn_lock_timeout_seconds):
                        current = await keeper.records.aget_thread_record(record.thread_key)
                        if current is not None and current.hold:
                            held.append(record.thread_id)
                            continue
                        await erase_thread(keeper, record.thread_key)
                    erased.append(record.thread_key)
            finally:
                receipt_id = uuid.uuid4().hex
                keeper.audit.record(
                    "erase",
                    tenant=tenant,
                    user_id=user_id,
                    thread_keys=erased,
                    receipt=receipt_id,
                    counts={"held": len(held)},
                )
        return len(erased), receipt_id, held

    try:
        count, receipt_id, held = run(main)
    except ThreadBusyError:
        raise fail("a thread of this user is busy with a turn; run the command again", 1) from None
    except NoArchiveError as exc:
        raise fail(str(exc), 1) from None
    say(f"erased {count} threads of {user_id}; receipt {receipt_id}")
    if held:
        say(f"kept {len(held)} threads on legal hold: {', '.join(held)}")


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
    THREADLINE_SWEEP_LIMIT, and print what was done (exit 1 if the sweep stopped early)."""
    settings = load_settings(model=False)
    now = _as_of(as_of)
    from rich.progress import Progress

    from threadline.retention import Sweeper, SweepReport

    async def main() -> SweepReport:
        async with opened_keeper(settings) as (keeper, locks):
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
    if report.error or report.lease_taken:
        raise typer.Exit(1)


@threads_app.command("restore")
def threads_restore(
    thread_id: Annotated[str, typer.Argument(help="The archived thread to bring back.")],
    tenant: Annotated[str | None, typer.Option(help="The tenant (with API keys).")] = None,
) -> None:
    """Bring an archived thread back whole from the archive; the next turn continues it."""
    settings = load_settings(model=False)
    from threadline.locks import ThreadBusyError
    from threadline.retention import ArchiveError, NoArchiveError, NotArchivedError
    from threadline.server.threads import scoped_thread_key

    key = scoped_thread_key(tenant, checked_thread_id(thread_id))

    async def main() -> int:
        async with opened_keeper(settings) as (keeper, locks):  # noqa: SIM117 (locks first)
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


@keys_app.command("rotate")
def keys_rotate(
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction.")] = 500,
) -> None:
    """Re-encrypt every stored value under the first key of THREADLINE_AES_KEYS: checkpoints,
    writes and metadata (Postgres or SQLite), the archive; the hot tier is emptied (a cache).

    Batches commit one by one and only rows not yet under the first key are read, so a
    rotation that was stopped is finished by running it again. Afterwards the other keys can
    be removed from THREADLINE_AES_KEYS."""
    settings = load_settings(model=False)
    if settings.aes_keys is None and settings.aes_key is None:
        raise fail("nothing is encrypted: set THREADLINE_AES_KEYS=new:KEY2,old:KEY1 first")
    from rich.progress import Progress

    from threadline.checkpointers import open_checkpointer
    from threadline.checkpointers.durable import DurablePostgresSaver
    from threadline.checkpointers.rotation import rotate_postgres, rotate_sqlite, stale_rows
    from threadline.checkpointers.serde import UnknownKeyError
    from threadline.checkpointers.sqlite import SqliteSaver
    from threadline.checkpointers.tiered import TieredSaver
    from threadline.retention.archive import open_archive, reseal_all

    async def main() -> str:
        async with open_checkpointer(settings) as saver:
            ring = saver.serde.cipher  # type: ignore[attr-defined]
            durable = getattr(saver, "durable", saver)
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task("re-encrypting", total=await stale_rows(saver, ring))

                def advance(what: str, rows: int) -> None:
                    progress.advance(task, rows)

                if isinstance(durable, DurablePostgresSaver):
                    rows = await rotate_postgres(durable, ring, batch, advance)
                elif isinstance(saver, SqliteSaver):
                    rows = await rotate_sqlite(saver, ring, batch, advance)
                else:
                    rows = 0  # memory: nothing outlives the process
            hot = await saver.hot.drop_all() if isinstance(saver, TieredSaver) else 0
            archive = open_archive(settings.archive_url)
            resealed, objects = (
                await reseal_all(archive, saver.serde, ring.current_name) if archive else (0, 0)
            )
        return (
            f"re-encrypted {rows} rows under key {ring.current_id!r}; dropped {hot} hot-tier "
            f"keys; re-sealed {resealed} of {objects} archive objects"
        )

    try:
        say(run(main))
    except UnknownKeyError as exc:
        raise fail(f"{exc}; add the key it was written with to THREADLINE_AES_KEYS", 1) from None


DEFAULT_SERVICES_DIR = Path(".threadline/services")
StateDir = Annotated[Path, typer.Option(help="Where the services keep their state file.")]


@services_app.command("start")
def services_start(
    state_dir: StateDir = DEFAULT_SERVICES_DIR,
    redis_cluster: Annotated[
        bool, typer.Option("--redis-cluster", help="Also a Redis Cluster (3 masters, 3 replicas).")
    ] = False,
) -> None:
    """Start Postgres, Redis Stack and a module-free Redis; print the URLs to export."""
    from threadline.dev.services import DevServices, ServiceError

    try:
        urls = DevServices.start(state_dir, redis_cluster=redis_cluster)
    except ServiceError as exc:
        raise fail(str(exc), code=1) from None
    for name, url in urls.items():
        print(f"export {name}={url}")


@services_app.command("stop")
def services_stop(state_dir: StateDir = DEFAULT_SERVICES_DIR) -> None:
    """Stop the services and delete their data."""
    from threadline.dev.services import DevServices

    DevServices.stop(state_dir)
    out.print("services stopped")


@services_app.command("status")
def services_status(state_dir: StateDir = DEFAULT_SERVICES_DIR) -> None:
    """Tell which services are running."""
    from threadline.dev.services import DevServices

    for service in DevServices.status(state_dir):
        out.print(service.describe(), highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
