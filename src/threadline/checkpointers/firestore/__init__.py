"""Firestore: checkpoints, turn receipts and thread records (`FirestoreSaver`)."""

from threadline.checkpointers.firestore.saver import DEFAULT_COLLECTION_PREFIX, FirestoreSaver

__all__ = ["DEFAULT_COLLECTION_PREFIX", "FirestoreSaver"]
