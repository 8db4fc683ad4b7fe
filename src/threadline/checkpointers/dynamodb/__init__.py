"""DynamoDB: checkpoints, turn receipts and thread records in one table (`DynamoDBSaver`)."""

from threadline.checkpointers.dynamodb.saver import DEFAULT_TABLE, DynamoDBSaver
from threadline.checkpointers.dynamodb.table import dynamodb_client

__all__ = ["DEFAULT_TABLE", "DynamoDBSaver", "dynamodb_client"]
