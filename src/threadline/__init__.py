"""threadline: a LangGraph chat agent with durable, shared, budget-aware thread memory."""
