"""The HTTP surface: composes the graph and a checkpointer; owns auth and tenancy."""

from threadline.server.app import create_app

__all__ = ["create_app"]
