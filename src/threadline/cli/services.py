"""`threadline services`: throwaway Postgres and Redis (and, on request, a Redis Cluster,
DynamoDB Local and the Firestore emulator) for development."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from threadline.cli.common import fail, out

services_app = typer.Typer(
    help="Throwaway Redis and Postgres for development (no Docker).", no_args_is_help=True
)


DEFAULT_SERVICES_DIR = Path(".threadline/services")
StateDir = Annotated[Path, typer.Option(help="Where the services keep their state file.")]
EXTRAS = ("redis-cluster", "dynamodb", "firestore")


@services_app.command("start")
def services_start(
    state_dir: StateDir = DEFAULT_SERVICES_DIR,
    redis_cluster: Annotated[
        bool, typer.Option("--redis-cluster", help="Also a Redis Cluster (3 masters, 3 replicas).")
    ] = False,
    with_: Annotated[
        str,
        typer.Option(
            "--with",
            metavar="NAMES",
            help=f"Also these, comma-separated: {', '.join(EXTRAS)}.",
        ),
    ] = "",
) -> None:
    """Start Postgres, Redis Stack and a module-free Redis (and what --with names); print the
    variables to export."""
    from threadline.dev.services import DevServices, ServiceError

    extras = {name.strip() for name in with_.split(",") if name.strip()}
    if unknown := sorted(extras - set(EXTRAS)):
        raise fail(
            f"--with: unknown service {', '.join(unknown)} (choose from {', '.join(EXTRAS)})"
        )
    try:
        urls = DevServices.start(
            state_dir,
            redis_cluster=redis_cluster or "redis-cluster" in extras,
            dynamodb="dynamodb" in extras,
            firestore="firestore" in extras,
        )
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
