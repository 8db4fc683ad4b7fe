"""The `threadline` command: serve, chat in the terminal, inspect threads, run dev services."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from langchain_core.messages import HumanMessage

from threadline.cli.common import checked_thread_id, fail, load_settings, out, run, say
from threadline.cli.importer import import_command
from threadline.cli.keys import keys_app
from threadline.cli.services import services_app
from threadline.cli.threads import message_text, threads_app
from threadline.cli.users import users_app

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
app.add_typer(threads_app, name="threads")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(services_app, name="services")
app.command("import")(import_command)


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
            "THREADLINE_CHECKPOINTER=postgres, redis, tiered, dynamodb or firestore "
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


@app.command()
def chat(thread_id: Annotated[str, typer.Argument(help="The conversation to continue.")]) -> None:
    """Talk to the agent in the terminal; the thread continues across runs. Ctrl-D quits."""
    settings = load_settings()  # before importing the graph, which reads settings too
    from threadline.assembly import make_graph, protector, thread_naming
    from threadline.server.threads import THREAD_ID_CONFIG_KEY, scoped_thread_key

    key = scoped_thread_key(None, checked_thread_id(thread_id), thread_naming(settings))
    config: Any = {"configurable": {"thread_id": key, THREAD_ID_CONFIG_KEY: thread_id}}
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
                say(f"agent> {message_text(result['messages'][-1])}")

    run(main)


if __name__ == "__main__":  # pragma: no cover
    app()
