"""`threadline keys`: rotate the encryption key; the ID key a single AES key implies."""

from __future__ import annotations

from typing import Annotated

import typer

from threadline.cli.common import err, fail, load_settings, run, say

keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)


@keys_app.command("id-key")
def keys_id_key() -> None:
    """Print the ID key a single THREADLINE_AES_KEY implies: set it as THREADLINE_ID_KEY before
    moving to a key ring (THREADLINE_AES_KEYS), so hashed thread ids stay the same."""
    settings = load_settings(model=False)
    if settings.aes_key is None:
        raise fail("only a single THREADLINE_AES_KEY implies an ID key (a ring needs it set)")
    from threadline.privacy.names import derived_id_key

    say(derived_id_key(settings.aes_key.get_secret_value()))


@keys_app.command("rotate")
def keys_rotate(
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction.")] = 500,
) -> None:
    """Re-encrypt every stored value under the first key of THREADLINE_AES_KEYS: checkpoints,
    writes, metadata and thread records (Postgres or SQLite), the archive; on Postgres each
    value is bound to its place on the way (with a single key, this is the migration of rows
    written before binding); threads stored under readable ids move to hashed ones; the hot
    tier is emptied (a cache).

    Batches commit one by one and only rows not yet under the first key are read, so a
    rotation that was stopped is finished by running it again. Afterwards the other keys can
    be removed from THREADLINE_AES_KEYS."""
    settings = load_settings(model=False)
    if settings.aes_keys is None and settings.aes_key is None:
        raise fail("nothing is encrypted: set THREADLINE_AES_KEYS=new:KEY2,old:KEY1 first")
    if settings.checkpointer in ("dynamodb", "firestore"):
        raise fail(
            "threadline keys rotate re-encrypts SQL stores (postgres, tiered, sqlite); on "
            f"{settings.checkpointer} keep every key in THREADLINE_AES_KEYS: values under any of "
            "them read"
        )
    from rich.progress import Progress

    from threadline.assembly import thread_naming
    from threadline.checkpointers import open_checkpointer
    from threadline.checkpointers.records import ARCHIVED
    from threadline.checkpointers.rotation import rotate, stale_rows
    from threadline.checkpointers.serde import UnknownKeyError
    from threadline.checkpointers.tiered import TieredSaver
    from threadline.privacy.id_migration import count_readable_threads, move_to_hashed_ids
    from threadline.retention.archive import (
        ArchivedThread,
        object_name,
        open_archive,
        reseal_all,
    )

    naming = thread_naming(settings)

    async def main() -> str:
        async with open_checkpointer(settings) as saver:
            ring = saver.serde.cipher  # type: ignore[attr-defined]
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task("re-encrypting", total=await stale_rows(saver, ring))

                def advance(what: str, rows: int) -> None:
                    progress.advance(task, rows)

                rows = await rotate(saver, ring, batch, advance)
                moving = progress.add_task(
                    "moving threads to hashed ids", total=await count_readable_threads(saver)
                )
                moved = await move_to_hashed_ids(
                    saver, naming, batch, lambda n: progress.advance(moving, n)
                )
            archive = open_archive(settings.archive_url)
            for thread in moved:  # an archived thread's object is named by its key
                if archive is not None and thread.status == ARCHIVED:
                    old, new = object_name(thread.old_key), object_name(thread.new_key)
                    if (data := await archive.get(old)) is not None:
                        moved_object = ArchivedThread.unseal(data, saver.serde, name=old)
                        await archive.put(new, moved_object.seal(saver.serde, new))
                        await archive.delete(old)
            hot = await saver.hot.drop_all() if isinstance(saver, TieredSaver) else 0
            resealed, objects = (
                await reseal_all(archive, saver.serde, ring.current_name) if archive else (0, 0)
            )
        return (
            f"re-encrypted {rows} rows under key {ring.current_id!r}; moved {len(moved)} "
            f"threads to hashed ids; dropped {hot} hot-tier keys; re-sealed {resealed} of "
            f"{objects} archive objects"
        )

    try:
        say(run(main))
    except UnknownKeyError as exc:
        raise fail(f"{exc}; add the key it was written with to THREADLINE_AES_KEYS", 1) from None
