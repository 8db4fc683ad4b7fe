"""Recovery after a Postgres restart: how long turns fail once the database is back.

    .venv/bin/python -m bench.postgres_restart [--restarts 5]

Serves the app (postgres backend, the offline model) in this process against a throwaway
Postgres, takes a turn, restarts Postgres (stop, start), then takes turns back to back and
reports, per restart, how long after Postgres accepted connections again the first turn
succeeded, how many turns failed meanwhile (503), and whether `/readyz` said 503 while they did.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from threadline.dev.services import PostgresServer, free_port
from threadline.server.app import create_app
from threadline.settings import Settings


def turn(text: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"type": "human", "content": text}]},
        "config": {"configurable": {"thread_id": "restart"}},
    }


def wait_for_postgres(url: str) -> None:
    while True:
        try:
            psycopg.connect(url, connect_timeout=1).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.01)


async def measure(restarts: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="threadline-restart-"))
    server = PostgresServer(free_port(), data_dir)
    server.start()
    try:
        settings = Settings(
            model="fake",
            checkpointer="postgres",
            postgres_url=server.url,  # type: ignore[arg-type]
            postgres_pool_timeout_seconds=1.0,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.post("/agent/invoke", json=turn("first"))).is_success
                for n in range(restarts):
                    await asyncio.sleep(1.5)  # pooled connections sit idle, as between turns
                    server.stop()
                    server.start()
                    wait_for_postgres(server.url)
                    back = time.perf_counter()
                    failed, ready_lied = 0, False
                    while True:
                        response = await client.post("/agent/invoke", json=turn(f"after {n}"))
                        if response.is_success:
                            break
                        failed += 1
                        print("   ", response.status_code, response.text[:200])
                        ready_lied |= (await client.get("/readyz")).status_code == 200
                    ms = (time.perf_counter() - back) * 1000
                    print(
                        f"restart {n + 1}: first turn ok {ms:.0f} ms after Postgres was back; "
                        f"{failed} turns failed meanwhile; /readyz said 200 while they did: "
                        f"{ready_lied}"
                    )
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=5)
    asyncio.run(measure(parser.parse_args().restarts))
