"""The temporal rule for clips and live streams: a lesion must persist to be shown.

A lesion that appears on one frame of a sweep and is gone on the next is almost
always a false one. With the rule ``K/N`` a lesion region of a frame is kept only
when it overlaps a lesion found (before the rule) on at least ``K`` of the ``N``
frames before it; otherwise it is removed. The rule looks only backwards, so a
live stream can apply it to the newest frame, and it is off for single frames
(there is no frame before). The first ``K`` frames of a clip show no lesion.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from .measure import EIGHT_CONNECTED


@dataclass(frozen=True)
class TemporalRule:
    """Keep a region when it overlaps a lesion on at least ``hits`` of the ``frames`` frames before it."""

    hits: int
    frames: int

    def __post_init__(self) -> None:
        if not (isinstance(self.hits, int) and isinstance(self.frames, int)) or not 1 <= self.hits <= self.frames:
            raise ValueError(f"the temporal rule K/N needs whole numbers 1 <= K <= N, got {self.hits}/{self.frames}")

    @classmethod
    def parse(cls, text: str) -> Optional["TemporalRule"]:
        """``"K/N"`` as a rule; ``"off"`` as None. ``ValueError`` with the accepted forms otherwise."""
        text = text.strip().lower()
        if text == "off":
            return None
        hits, slash, frames = text.partition("/")
        try:
            if not slash:
                raise ValueError
            return cls(int(hits), int(frames))
        except ValueError:
            raise ValueError(f"the temporal rule must be K/N (such as 2/3) or off, got {text!r}") from None

    def __str__(self) -> str:
        return f"{self.hits}/{self.frames}"


class TemporalFilter:
    """Applies a :class:`TemporalRule` to the masks of consecutive frames, one frame at a time."""

    def __init__(self, rule: Optional[TemporalRule]):
        self.rule = rule
        self._history: deque = deque(maxlen=rule.frames if rule else 0)  # masks before the rule, newest last

    def reset(self) -> None:
        """Forget the frames seen so far (a new clip, a new stream, a change of frame size)."""
        self._history.clear()

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """The ``(H, W)`` mask of the next frame with the regions that did not persist removed."""
        mask = np.asarray(mask, dtype=bool)
        if self.rule is None:
            return mask
        if self._history and self._history[-1].shape != mask.shape:
            self.reset()
        kept = self._persistent(mask)
        self._history.append(mask)
        return kept

    def _persistent(self, mask: np.ndarray) -> np.ndarray:
        if not mask.any() or len(self._history) < self.rule.hits:
            return np.zeros_like(mask)
        labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        hits = np.zeros(count + 1, dtype=np.int64)
        for earlier in self._history:
            touched = np.unique(labels[earlier & mask])
            hits[touched] += 1
        hits[0] = 0
        return (hits >= self.rule.hits)[labels]
