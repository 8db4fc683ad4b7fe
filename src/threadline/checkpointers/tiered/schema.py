"""The tiered saver's tables (the invalidation journal, the deployment id) and its key prefix."""

from __future__ import annotations

import os
from importlib import resources

import psycopg

from threadline.checkpointers.durable import DurablePostgresSaver

MIGRATIONS = [
    statement
    for statement in resources.files("threadline.checkpointers")
    .joinpath("sql/postgres_tiered.sql")
    .read_text()
    .split(";\n")
    if statement.strip()
]
DEPLOYMENT_INSERT_SQL = "INSERT INTO threadline_deployment (id) VALUES (%s) ON CONFLICT DO NOTHING"
DEPLOYMENT_SELECT_SQL = "SELECT id FROM threadline_deployment"
DEFAULT_KEY_PREFIX = "threadline"


async def migrate(durable: DurablePostgresSaver) -> None:
    """The durable saver's tables, then the tiered saver's, and this database's id."""
    await durable.setup()
    async with durable.cursor() as cur:
        for statement in MIGRATIONS:
            await cur.execute(statement)
        await cur.execute(DEPLOYMENT_INSERT_SQL, (os.urandom(6).hex(),))


async def deployment_key_prefix(durable: DurablePostgresSaver) -> str:
    """`threadline:<id>`, the id stored once per database at setup (or `threadline` for a
    database set up before there was one)."""
    try:
        async with durable.cursor() as cur:
            await cur.execute(DEPLOYMENT_SELECT_SQL)
            row = await cur.fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    return f"{DEFAULT_KEY_PREFIX}:{row['id']}" if row else DEFAULT_KEY_PREFIX
