"""`threadline users`: forget a user."""

from __future__ import annotations

from typing import Annotated

import typer

from threadline.cli.common import checked_thread_id, fail, load_settings, run, say

users_app = typer.Typer(help="Forget users.", no_args_is_help=True)


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
    from threadline.assembly import open_keeper, thread_naming
    from threadline.locks import ThreadBusyError
    from threadline.retention import NoArchiveError
    from threadline.server.erasure import erase_thread, user_threads

    naming = thread_naming(settings)

    async def main() -> tuple[int, str, list[str]]:
        import uuid

        erased: list[str] = []
        held: list[str] = []
        async with open_keeper(settings) as (keeper, locks):
            try:
                for record in await user_threads(keeper, tenant, user_id, naming):
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
