"""Answers to requests the worker sends us, sans-io.

A server request blocks its turn until it is answered (an unanswered command approval was seen to
hold a turn for as long as anyone watched), so every one is answered at once, in the way that
lets the turn go on without doing anything the proxy did not allow:

* command and file-change approvals are declined (the item ends ``declined``, the model is told,
  the turn continues); ``cancel`` would interrupt the turn and ``accept`` would run the command;
* MCP elicitations are declined;
* ``item/tool/call`` on a thread that declared client tools is left pending: the HTTP response
  ends with ``tool_calls`` and deleting the thread cancels the call. An error answer here would
  make codex hand "dynamic tool request failed" to the model and sample again, at the cost of an
  extra upstream request. On any other thread it cannot be ours, and gets the generic error;
* everything else gets JSON-RPC error -32601 "not supported", which codex treats as a refusal.
"""

from __future__ import annotations

from .rpc import ServerRequest, encode_error, encode_result

METHOD_NOT_FOUND = -32601
NOT_SUPPORTED = "not supported"

_DECISION_DECLINE = frozenset(
    {"item/commandExecution/requestApproval", "item/fileChange/requestApproval"}
)
_ACTION_DECLINE = frozenset({"mcpServer/elicitation/request"})
TOOL_CALL = "item/tool/call"


def answer_for(req: ServerRequest, *, tool_thread: bool) -> bytes | None:
    """The line to write back for ``req``, or ``None`` to leave it unanswered.

    ``tool_thread`` is whether the thread ``req`` belongs to declared client tools.
    """
    if req.method in _DECISION_DECLINE:
        return encode_result(req.id, {"decision": "decline"})
    if req.method in _ACTION_DECLINE:
        return encode_result(req.id, {"action": "decline"})
    if req.method == TOOL_CALL and tool_thread:
        return None
    return encode_error(req.id, METHOD_NOT_FOUND, NOT_SUPPORTED)
