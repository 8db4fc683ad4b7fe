"""Prompts the agent sends besides the user's own words."""

SUMMARY_HEADER = "Summary of the earlier conversation (older turns are folded into it):"

SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant. "
    "Extend the existing summary with the new turns below. Keep every fact, name, number, "
    "decision and open question the user or assistant stated; drop pleasantries. "
    "Write plain sentences, no preamble. Stay under {max_tokens} tokens."
)

SUMMARY_REQUEST = """Existing summary:
{summary}

New turns to fold in:
{transcript}

Return the updated summary only."""

CUT_MARKER = "\n[… {tokens} tokens cut to fit the context budget …]\n"
