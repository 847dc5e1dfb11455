"""OpenAI function calling, request side: ``tools``, ``tool_choice``, ``parallel_tool_calls``
and the tool history in a conversation, validated the way OpenAI validates them. Sans-io.

Chat completions and the Responses API spell tools differently (``{"type": "function",
"function": {...}}`` vs ``{"type": "function", "name": ...}``); both become one
:class:`~quartproxy.conversation.ToolRequest`, so the backends see one shape.

Rules:

1. Only ``function`` tools exist here; any other type is a 400 that names it.
2. A name must match OpenAI's ``^[a-zA-Z0-9_-]{1,64}$``, be unique, and not be one that codex
   keeps for itself (a tool by that name would be dropped or shadowed without a word):
   ``exec_command``, ``shell_command``, ``shell``, ``request_user_input``.
3. ``parameters``, when given, is a JSON object. ``strict`` is accepted (codex cannot enforce
   it; the arguments are best effort either way).
4. ``tool_choice``: ``auto`` (default), ``none`` (nothing is declared), ``required`` and one
   named function (declared alone) are best effort — codex has no way to force a call — and
   ``allowed_tools`` narrows the declared set. A named function that is not in ``tools`` is a 400.
5. The history must be consistent, as OpenAI requires: every ``tool`` message answers a call of
   an earlier assistant message, and every call is answered before the next non-tool message.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from . import errors
from .conversation import Conversation, FunctionTool, Item, ToolRequest

NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
RESERVED_NAMES = frozenset({"exec_command", "shell_command", "shell", "request_user_input"})

Flavor = Literal["chat", "responses"]


def _function_fields(tool: dict[str, Any], flavor: Flavor, where: str) -> tuple[
    dict[str, Any], str
]:
    if flavor == "chat":
        function = tool.get("function")
        if not isinstance(function, dict):
            raise errors.invalid("A function tool needs a 'function' object.",
                                 f"{where}.function")
        return function, f"{where}.function"
    return tool, where


def parse_tools(
    tools: Any, tool_choice: Any, parallel: Any, *, flavor: Flavor
) -> ToolRequest | None:
    """The request's tools, or ``None`` when it declares none (absent or ``[]``)."""
    if parallel is not None and not isinstance(parallel, bool):
        raise errors.invalid("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls")
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise errors.invalid("'tool_choice' needs 'tools'.", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise errors.invalid("'tools' must be an array.", "tools")
    declared: list[FunctionTool] = []
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise errors.invalid("Each tool must be an object.", where)
        kind = tool.get("type")
        if kind != "function":
            raise errors.invalid(
                f"Tool type {kind!r} is not supported; only 'function' tools are.",
                f"{where}.type", code="unsupported_parameter",
            )
        fields, prefix = _function_fields(tool, flavor, where)
        name = fields.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise errors.invalid(
                "A function name must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'.",
                f"{prefix}.name",
            )
        if name in RESERVED_NAMES:
            raise errors.invalid(f"tool name {name} is reserved by the codex backend.",
                                 f"{prefix}.name")
        if name in seen:
            raise errors.invalid(f"Duplicate tool name {name}.", f"{prefix}.name")
        seen.add(name)
        description = fields.get("description")
        if description is not None and not isinstance(description, str):
            raise errors.invalid("'description' must be a string.", f"{prefix}.description")
        parameters = fields.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise errors.invalid("'parameters' must be a JSON Schema object.",
                                 f"{prefix}.parameters")
        strict = fields.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise errors.invalid("'strict' must be a boolean.", f"{prefix}.strict")
        declared.append(FunctionTool(name, description or "", parameters, bool(strict)))
    choice, selected = _choice(tool_choice, declared, flavor)
    return ToolRequest(tools=selected, choice=choice, parallel=parallel is not False)


def _named(value: dict[str, Any], flavor: Flavor) -> Any:
    if flavor == "chat":
        function = value.get("function")
        return function.get("name") if isinstance(function, dict) else None
    return value.get("name")


def _choice(
    value: Any, tools: list[FunctionTool], flavor: Flavor
) -> tuple[Literal["auto", "none", "required", "function"], tuple[FunctionTool, ...]]:
    every = tuple(tools)
    if value is None or value == "auto":
        return "auto", every
    if value == "none":
        return "none", ()
    if value == "required":
        return "required", every
    if not isinstance(value, dict):
        raise errors.invalid("'tool_choice' must be 'none', 'auto', 'required' or an object.",
                             "tool_choice")
    kind = value.get("type")
    by_name = {tool.name: tool for tool in tools}
    if kind == "function":
        name = _named(value, flavor)
        if not isinstance(name, str) or name not in by_name:
            raise errors.invalid(f"'tool_choice' names the function {name!r}, which is not in "
                                 "'tools'.", "tool_choice")
        return "function", (by_name[name],)
    if kind == "allowed_tools":
        spec = value.get("allowed_tools") if flavor == "chat" else value
        if not isinstance(spec, dict):
            raise errors.invalid("'allowed_tools' must be an object.", "tool_choice")
        mode = spec.get("mode", "auto")
        listed = spec.get("tools")
        if mode not in ("auto", "required") or not isinstance(listed, list):
            raise errors.invalid("'allowed_tools' needs a mode ('auto' or 'required') and a "
                                 "list of tools.", "tool_choice")
        chosen: list[FunctionTool] = []
        for entry in listed:
            name = _named(entry, flavor) if isinstance(entry, dict) else None
            if not isinstance(name, str) or name not in by_name:
                raise errors.invalid(f"'allowed_tools' lists {name!r}, which is not in "
                                     "'tools'.", "tool_choice")
            chosen.append(by_name[name])
        return ("required" if mode == "required" else "auto"), tuple(chosen)
    raise errors.invalid(f"Unsupported 'tool_choice' type {kind!r}.", "tool_choice")


def check_history(conversation: Conversation, *, param: str = "messages") -> None:
    """Rule 5: tool results answer earlier calls, and every call gets its result."""
    open_calls: dict[str, int] = {}  # call id -> index of the assistant message that made it
    for index, item in enumerate(conversation.items):
        if item.role == "tool":
            if item.tool_call_id is None or item.tool_call_id not in open_calls:
                raise errors.invalid(
                    f"Message {index} is a tool result for {item.tool_call_id!r}, which no "
                    "earlier assistant tool_calls entry made.", f"{param}[{index}]",
                )
            del open_calls[item.tool_call_id]
            continue
        if open_calls:
            first = min(open_calls.values())
            raise errors.invalid(
                f"The assistant message {first} has tool_calls without a tool result "
                f"({', '.join(sorted(open_calls))}).", f"{param}[{first}]",
            )
        for call in item.tool_calls:
            open_calls[call.call_id] = index
    if open_calls:
        first = min(open_calls.values())
        raise errors.invalid(
            f"The assistant message {first} has tool_calls without a tool result "
            f"({', '.join(sorted(open_calls))}).", f"{param}[{first}]",
        )


def flatten_tool_history(conversation: Conversation) -> Conversation:
    """The conversation with tool calls and results as plain text (``PROXY_TOOLS=ignore``)."""
    if not conversation.has_tool_history:
        return conversation
    items: list[Item] = []
    for item in conversation.items:
        if item.tool_calls:
            calls = "\n".join(f"[tool_call {call.call_id}] {call.name}({call.arguments})"
                              for call in item.tool_calls)
            items.append(Item("assistant", f"{item.text}\n{calls}" if item.text else calls))
        elif item.role == "tool":
            label = f"[tool result {item.tool_call_id}]" if item.tool_call_id else "[tool result]"
            items.append(Item("user", f"{label} {item.text}"))
        else:
            items.append(item)
    return Conversation(tuple(items), conversation.instructions)
