"""Incremental detokenisation with stop strings, without re-decoding the whole output every step."""

from __future__ import annotations

from typing import Any


class TextStream:
    """Turns committed token ids into text pieces; holds back text that may begin a stop string."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.prefix_offset = 0  # tokens before this are settled text
        self.read_offset = 0
        self.pending = ""  # decoded but not yet emitted (may begin a stop string)
        self.stopped = False
        self._hold = max((len(s) for s in stop), default=1) - 1

    def _decode_new(self) -> str:
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""

    def push(self, token_ids: list[int]) -> str:
        """Add tokens; returns the text that is now safe to show ('' if none)."""
        if self.stopped:
            return ""
        self.ids.extend(token_ids)
        self.pending += self._decode_new()
        for stop in self.stop:
            at = self.pending.find(stop)
            if at >= 0:
                self.stopped = True
                out, self.pending = self.pending[:at], ""
                return out
        if self._hold == 0:
            out, self.pending = self.pending, ""
            return out
        cut = max(0, len(self.pending) - self._hold)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
