"""`threadline services`: throwaway Postgres and Redis for development."""

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
