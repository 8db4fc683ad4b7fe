"""Texts the agent sends besides the user's own words."""

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

NO_SUMMARY_YET = "(none yet)"

# Shown in place of text removed to fit the budget, so neither model nor reader mistakes a cut
# message for a whole one.
CUT_MARKER = "\n[… {chars} characters cut to fit the context budget …]\n"
# What is left of a message when none of its text fits.
ALL_CUT_MARKER = "[all {chars} characters cut to fit the context budget]"

CUT_PARTS = "[{parts} image(s) or other non-text part(s) cut to fit the context budget]"

CUT_TOOL_ARGUMENTS = "[arguments cut to fit the context budget]"

# Shown as the result of a tool call whose result never arrived (a crash between the model's
# call and the tool's answer), because the API rejects a call without a result.
MISSING_TOOL_RESULT = "[no result: this tool call was interrupted before it returned]"

INVALID_TOOL_CALL_RESULT = "[not run: the tool call was malformed ({error})]"
