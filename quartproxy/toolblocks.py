"""Tool blocks in answer text: ``<use_tool …>…</use_tool>``, sans-io.

Some clients (editor agents) ask the model to write tool calls as tagged blocks and execute them
themselves. Two settings make the proxy cooperate:

* ``PROXY_SUPPRESS_TAIL_AFTER_TOOLS``: text after the last complete block is held back; it is
  released only when another block completes, and dropped at the end of the turn (the model's
  guess at the tool's result is not an answer).
* ``PROXY_STOP_AFTER_TOOLS``: the same holding, plus the turn is cut — after the first block
  (``first``), after ``PROXY_TOOL_BLOCK_MAX`` blocks, or (``burst``) once no new block has
  completed for ``PROXY_STOP_AFTER_TOOLS_GRACE_MS``. A cut finishes normally with ``stop``.

:class:`ToolBlockGate` only decides which text may leave; tags may be split across deltas, so
a partial opening tag is held too. Scanning resumes where the previous one stopped, so a long
answer costs O(n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OPEN = "<use_tool"
CLOSE = "</use_tool>"


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    stop_after: bool
    mode: Literal["burst", "first"]
    grace_s: float
    max_blocks: int
    suppress_tail: bool

    @property
    def active(self) -> bool:
        return self.stop_after or self.suppress_tail

    def cut_now(self, blocks: int) -> bool:
        """Whether the turn ends right after the block that made ``blocks`` complete ones."""
        if not self.stop_after:
            return False
        return self.mode == "first" or (self.max_blocks > 0 and blocks >= self.max_blocks)


def _partial_open(text: str) -> int:
    """Length of the longest suffix of ``text`` that could still grow into ``OPEN``."""
    for size in range(min(len(text), len(OPEN) - 1), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


class ToolBlockGate:
    def __init__(self) -> None:
        self.blocks = 0  # complete blocks seen
        self._buf = ""  # held text, not yet released
        self._in_block = False
        self._scan = 0  # where the next tag search in _buf starts

    def feed(self, text: str) -> str:
        """Add answer text; return what may be released now."""
        buf = self._buf
        self._buf = ""  # one reference left, so += extends in place (no quadratic copying)
        buf += text
        released: list[str] = []
        while True:
            if self._in_block:
                end = buf.find(CLOSE, self._scan)
                if end < 0:
                    self._scan = max(0, len(buf) - len(CLOSE) + 1)
                    break
                end += len(CLOSE)
                self.blocks += 1
                self._in_block = False
                released.append(buf[:end])
                buf = buf[end:]
                self._scan = 0
                continue
            start = buf.find(OPEN, self._scan)
            if start >= 0:
                if self.blocks == 0 and start > 0:
                    released.append(buf[:start])  # text before the first block is plain answer
                    buf = buf[start:]
                    start = 0
                self._in_block = True
                self._scan = start + len(OPEN)
                continue
            if self.blocks == 0:
                keep = _partial_open(buf)
                released.append(buf[: len(buf) - keep])
                buf = buf[len(buf) - keep:]
                self._scan = 0
            else:
                self._scan = max(0, len(buf) - len(OPEN) + 1)
            break
        self._buf = buf
        return "".join(released)

    def finish(self) -> str:
        """End of the turn: with no complete block nothing was a tool call, so release all;
        otherwise the held tail is dropped."""
        rest = self._buf if self.blocks == 0 else ""
        self._buf = ""
        return rest
