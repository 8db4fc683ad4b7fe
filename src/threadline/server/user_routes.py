"""The users API: forget a user — every thread they own in the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from threadline.server.auth import Tenant
from threadline.server.erasure import ErasureReceipt, erase_threads, refuse_held, user_threads
from threadline.server.serving import ServingSlot
from threadline.server.threads import id_in_path

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[str, id_in_path()]


@router.delete("/{user_id}", response_model=ErasureReceipt)
async def erase_user(user_id: UserId, tenant: Tenant, request: Request) -> ErasureReceipt:
    """Erase every thread of the user in this tenant, from every tier and the archive (0 if
    they have none). Threads on legal hold are kept and listed in `held_threads`.

    A thread in the middle of a turn makes this a 409 after the others are gone: retry."""
    slot: ServingSlot = request.app.state.serving
    keeper = slot.current.keeper
    threads = await user_threads(keeper, tenant, user_id, request.app.state.admission.naming)
    return await erase_threads(
        keeper,
        request.app.state.admission,
        tenant=tenant,
        keys=[r.thread_key for r in threads if not r.hold],
        user_id=user_id,
        held=[r.thread_id for r in threads if r.hold],
        check=lambda key: refuse_held(keeper, key),
    )
