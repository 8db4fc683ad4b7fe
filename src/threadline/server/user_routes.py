"""The users API: forget a user — every thread they own in the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from threadline.server.auth import Tenant
from threadline.server.erasure import ErasureReceipt, erase_threads, user_thread_keys
from threadline.server.serving import ServingSlot
from threadline.server.threads import id_in_path

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[str, id_in_path()]


@router.delete("/{user_id}", response_model=ErasureReceipt)
async def erase_user(user_id: UserId, tenant: Tenant, request: Request) -> ErasureReceipt:
    """Erase every thread of the user in this tenant, from every tier (0 if they have none).

    A thread in the middle of a turn makes this a 409 after the others are gone: retry."""
    slot: ServingSlot = request.app.state.serving
    saver = slot.current.runner.graph.checkpointer
    keys = await user_thread_keys(saver, tenant, user_id)  # type: ignore[arg-type]
    return await erase_threads(
        saver,  # type: ignore[arg-type]
        request.app.state.admission,
        request.app.state.audit,
        tenant=tenant,
        keys=keys,
        user_id=user_id,
    )
