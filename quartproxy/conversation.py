"""The conversation a client sent, validated and normalised, before any backend sees it.

Chat completions, legacy completions and the Responses API all arrive here as the same
structure, so each backend has one mapping to write: proto (and app-server before 0.140) flatten
it into one text prompt; app-server 0.140+ puts instructions into the thread and earlier turns
into ``thread/inject_items``. Sans-io: no backend, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
INSTRUCTION_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class ToolCallRef:
    """A function call the model made earlier in the conversation (assistant ``tool_calls``)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Item:
    """One message of the conversation.

    ``text`` is the message's text (parts joined, non-text parts as ``[image]``-style markers).
    An assistant message may carry ``tool_calls``; a ``tool`` message answers ``tool_call_id``.
    """

    role: Role
    text: str
    tool_calls: tuple[ToolCallRef, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """One client-declared function (OpenAI ``tools[i]`` of type ``function``)."""

    name: str
    description: str
    parameters: dict[str, Any] | None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """What the client asked for about tools, after validation.

    ``tools`` are the functions to declare to codex (already narrowed by ``tool_choice``);
    ``choice`` is ``auto``, ``none``, ``required`` or ``function`` (one named function, which is
    then the only one in ``tools``). ``parallel`` false means only the first call is returned.
    """

    tools: tuple[FunctionTool, ...]
    choice: Literal["auto", "none", "required", "function"] = "auto"
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.tools)

    def instruction(self) -> str | None:
        """The nudge appended to the instructions for a choice codex cannot enforce."""
        if self.choice == "required":
            return "You must call one or more of the provided functions in this response."
        if self.choice == "function" and self.tools:
            return f"Call the function {self.tools[0].name} now."
        return None


@dataclass(frozen=True, slots=True)
class Conversation:
    items: tuple[Item, ...]
    # Responses API `instructions`: placed where system messages go, ahead of them.
    instructions: str | None = None
    _flat: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def has_tool_history(self) -> bool:
        return any(item.tool_calls or item.role == "tool" for item in self.items)

    def instruction_text(self) -> str:
        """System/developer messages (and ``instructions``) joined, in order."""
        parts = [self.instructions] if self.instructions else []
        parts += [item.text for item in self.items if item.role in INSTRUCTION_ROLES and item.text]
        return "\n\n".join(parts)

    def flatten(self) -> str:
        """The whole conversation as one text prompt: one ``[role] text`` block per message.

        Tool calls and results become text too, so a backend without native function calling
        still sees what happened.
        """
        if self._flat:
            return self._flat[0]
        blocks: list[str] = []
        if self.instructions:
            blocks.append(f"[system] {self.instructions}")
        for item in self.items:
            text = item.text
            if item.tool_calls:
                calls = "\n".join(
                    f"[tool_call {call.call_id}] {call.name}({call.arguments})"
                    for call in item.tool_calls
                )
                text = f"{text}\n{calls}" if text else calls
            if item.role == "tool" and item.tool_call_id:
                blocks.append(f"[tool {item.tool_call_id}] {text}")
            else:
                blocks.append(f"[{item.role}] {text}")
        flat = "\n".join(blocks)
        self._flat.append(flat)
        return flat

    def split_last_user(self) -> tuple[tuple[Item, ...], str | None]:
        """(everything before, the last user text) when the conversation ends with a user
        message; (all items, None) when it ends otherwise (a tool result, an assistant
        prefill), in which case the backend answers the history as it stands."""
        body = tuple(item for item in self.items if item.role not in INSTRUCTION_ROLES)
        if body and body[-1].role == "user":
            return body[:-1], body[-1].text
        return body, None
