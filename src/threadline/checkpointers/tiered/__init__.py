"""The tiered checkpointer: Redis hot tier in front of the durable Postgres saver.

- `saver`: `TieredSaver`, the checkpoint saver (reads, writes, deletion);
- `guard`: every Redis call's deadline and the breaker;
- `journal`: hot entries that may be stale, journalled for every replica and repaired;
- `staged`: staged Redis changes waiting for their commit;
- `schema`: the tiered saver's tables and the deployment's Redis key prefix;
- `tasks`: background tasks, each owned by the component that starts it.
The Redis side itself (entries, scripts) is `checkpointers.hot`.
"""

from threadline.checkpointers.tiered.saver import TieredSaver
from threadline.checkpointers.tiered.staged import COMMIT_DELAY_SECONDS

__all__ = ["COMMIT_DELAY_SECONDS", "TieredSaver"]
