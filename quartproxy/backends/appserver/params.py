"""What the proxy sends to ``codex app-server``: worker argv, ``initialize``, and the per-request
thread plan (``thread/start`` → optional ``thread/inject_items`` → ``turn/start``).

Everything here is a pure function of settings, the negotiated :class:`~.version.Features` and a
validated :class:`~quartproxy.backends.base.TurnRequest`, so the exact bytes codex receives are
unit-tested without a worker.

Where the request's conversation goes, and why:

* system/developer text becomes ``developerInstructions``. codex prepends that string to its own
  second developer message without a separator, hence the trailing blank line;
* a request with client tools (a *tool thread*) instead replaces codex's persona
  (``baseInstructions``): the persona describes shell and patch tools that are switched off for
  such a thread, and a model that follows it calls them, which costs an extra upstream round;
* earlier turns go in as Responses items through ``thread/inject_items``, natively (tool calls as
  ``function_call``/``function_call_output``), and the last user message is the turn's input. A
  conversation that ends with a tool result or an assistant message gets an empty input: the
  model answers the injected history as it stands;
* releases without ``thread/inject_items`` get the conversation flattened into one text input,
  exactly as the proto backend sends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...config import Settings
from ...conversation import FunctionTool, Item
from ..base import TurnRequest
from ..process import toml_string
from .version import Features

CLIENT_NAME = "quartproxy"  # becomes the upstream `originator` and the start of the User-Agent

# Notifications this proxy never uses, suppressed per connection (it cuts stdout volume, which
# every thread on a worker shares). Never listed: item/agentMessage/delta, item/completed,
# thread/tokenUsage/updated, error, turn/completed, item/reasoning/*, and the raw events
# rawResponseItem/completed and rawResponse/completed that function calling depends on.
OPT_OUT_METHODS: tuple[str, ...] = (
    "account/rateLimits/updated",
    "thread/status/changed",
    "thread/started",
    "item/started",
    "warning",
    "configWarning",
    "remoteControl/status/changed",
)

# Client tool names codex drops or shadows silently (a call to them never reaches the client).
# Request validation refuses them with a 400 before a thread is started.
RESERVED_TOOL_NAMES = frozenset({"exec_command", "shell_command", "shell", "request_user_input"})

# Feature switches of the per-thread config of tool threads: codex's own tools off, so the
# model sees only the client's (request_user_input cannot be removed; codex answers it itself).
TOOL_THREAD_FEATURES_OFF = ("shell_tool", "unified_exec", "view_image", "goals", "multi_agent")


def tool_thread_config() -> dict[str, Any]:
    """The ``config`` of a tool thread's ``thread/start`` (a fresh dict each time)."""
    return {"features": {name: False for name in TOOL_THREAD_FEATURES_OFF}}

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def worker_argv(program: list[str], settings: Settings) -> list[str]:
    """``<program> app-server -c key=value …``: only settings, never request text.

    Values are TOML literals (quoted strings, numbers, booleans), which every supported release
    parses. Besides the proto overrides, three matter for a long-lived worker: the per-thread
    login-shell snapshot is off (it made throughput fall from run to run), connection retries are
    bounded (by default an unreachable upstream is retried forever and the turn never ends), and
    web search is disabled (``tools.web_search=false`` no longer removes that tool).
    """
    overrides: dict[str, str] = {}
    if settings.force_provider:
        overrides["model_provider"] = toml_string(settings.force_provider)
    overrides |= {
        "model": toml_string(settings.codex_model),
        "sandbox_mode": toml_string(settings.sandbox_mode),
        "approval_policy": toml_string("never"),
        "project_doc_max_bytes": "0",
        "history.persistence": toml_string("none"),
        "features.shell_snapshot": "false",
        "features.unbounded_connection_retries": "false",
        "web_search": toml_string("disabled"),
    }
    argv = [*program, "app-server"]
    for key, value in overrides.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def initialize_params(client_version: str, *, experimental: bool, opt_out: bool) -> dict[str, Any]:
    """Params of the one ``initialize`` a worker gets.

    ``experimental`` (``capabilities.experimentalApi``) is what allows ``dynamicTools`` and raw
    events on ``thread/start``; it changes nothing for other threads. ``opt_out`` adds
    :data:`OPT_OUT_METHODS` (0.100+).
    """
    capabilities: dict[str, Any] = {}
    if experimental:
        capabilities["experimentalApi"] = True
    if opt_out:
        capabilities["optOutNotificationMethods"] = list(OPT_OUT_METHODS)
    params: dict[str, Any] = {
        "clientInfo": {"name": CLIENT_NAME, "title": None, "version": client_version}
    }
    if capabilities:
        params["capabilities"] = capabilities
    return params


@dataclass(frozen=True)
class ThreadPlan:
    """Everything one request sends, decided before the first byte is written.

    ``declared`` and ``injected_call_ids`` are what the turn's
    :class:`~.translate.TurnTranslator` needs to tell the model's new calls from echoes of the
    history.
    """

    thread_start: dict[str, Any]
    inject: list[dict[str, Any]]  # Responses items; empty: no thread/inject_items call
    turn_input: list[dict[str, Any]]
    declared: frozenset[str]
    injected_call_ids: frozenset[str]
    tool_thread: bool


def dynamic_tool(tool: FunctionTool) -> dict[str, Any]:
    """One client function as a codex dynamic tool.

    codex requires ``description`` and ``inputSchema``; ``strict`` has no counterpart (codex
    always sends ``strict: false`` upstream).
    """
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description or "",
        "inputSchema": tool.parameters if tool.parameters is not None else dict(_EMPTY_SCHEMA),
    }


def _message(role: str, part: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def history_items(items: Iterable[Item]) -> list[dict[str, Any]]:
    """Earlier messages as the Responses items ``thread/inject_items`` takes.

    Instructions are not history (they go into the thread's instructions). An assistant message
    becomes its text (if any) followed by one ``function_call`` per tool call; a tool message
    becomes the ``function_call_output`` of its call. codex would silently drop ``system`` items,
    so none are produced.
    """
    out: list[dict[str, Any]] = []
    for item in items:
        if item.role == "user":
            out.append(_message("user", "input_text", item.text))
        elif item.role == "assistant":
            if item.text:
                out.append(_message("assistant", "output_text", item.text))
            for call in item.tool_calls:
                out.append(
                    {
                        "type": "function_call",
                        "call_id": call.call_id,
                        "name": call.name,
                        "arguments": call.arguments,
                    }
                )
        elif item.role == "tool":
            if item.tool_call_id:
                out.append(
                    {
                        "type": "function_call_output",
                        "call_id": item.tool_call_id,
                        "output": item.text,
                    }
                )
            else:  # not answerable natively: keep what it said
                out.append(_message("user", "input_text", f"[tool] {item.text}"))
    return out


def _with_blank_line(text: str) -> str:
    return text.rstrip("\n") + "\n\n"


def plan_thread(
    req: TurnRequest,
    *,
    cwd: str,
    sandbox: str,
    features: Features,
    tools_base_instructions: str,
) -> ThreadPlan:
    """Map one request onto a fresh thread (see the module docstring for the rules)."""
    conversation = req.conversation
    instructions = conversation.instruction_text()
    # Tools on a release without dynamic tools: the request path refuses those before planning;
    # if one gets here anyway it is planned as a plain thread.
    tool_request = req.tools if features.dynamic_tools else None
    tool_thread = tool_request is not None
    start: dict[str, Any] = {
        "cwd": cwd,
        "model": req.model,
        "approvalPolicy": "never",
        "sandbox": sandbox,
    }
    declared: frozenset[str] = frozenset()
    if tool_request is not None:
        # tool_choice "none": nothing is declared, but the thread stays a tool thread (persona and
        # config), so tool history still goes in natively and the model is not told of shells.
        tools = () if tool_request.choice == "none" else tool_request.tools
        base = instructions or tools_base_instructions
        nudge = tool_request.instruction()
        if nudge:
            base = f"{base}\n\n{nudge}" if base else nudge
        start["baseInstructions"] = base
        start["dynamicTools"] = [dynamic_tool(tool) for tool in tools]
        start["experimentalRawEvents"] = True
        start["config"] = tool_thread_config()
        declared = frozenset(tool.name for tool in tools)
    elif instructions and features.inject_items:
        start["developerInstructions"] = _with_blank_line(instructions)

    if not features.inject_items:
        return ThreadPlan(
            thread_start=start,
            inject=[],
            turn_input=[{"type": "text", "text": req.prompt}],
            declared=declared,
            injected_call_ids=frozenset(),
            tool_thread=tool_thread,
        )

    before, last_user = conversation.split_last_user()
    inject = history_items(before)
    call_ids = frozenset(
        item["call_id"]
        for item in inject
        if item["type"] in ("function_call", "function_call_output")
    )
    return ThreadPlan(
        thread_start=start,
        inject=inject,
        turn_input=[] if last_user is None else [{"type": "text", "text": last_user}],
        declared=declared,
        injected_call_ids=call_ids,
        tool_thread=tool_thread,
    )


def turn_start_params(thread_id: str, plan: ThreadPlan, req: TurnRequest) -> dict[str, Any]:
    """``turn/start`` for the planned thread. ``effort`` goes through unvalidated by codex, so
    only whitelisted values may reach here (the request path checks them)."""
    params: dict[str, Any] = {"threadId": thread_id, "input": plan.turn_input}
    if req.effort is not None:
        params["effort"] = req.effort
    if req.output_schema is not None:
        params["outputSchema"] = req.output_schema
    return params
