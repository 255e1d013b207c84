"""A mixin for objects used as ``with x:`` that ``close()`` on the way out (device links, stores, pools)."""

from __future__ import annotations

from typing import Any, Self


class Closing:
    """``with x:`` gives ``x`` and calls ``x.close()`` on exit (also on errors, which propagate)."""

    def close(self) -> None:
        """Release what the object holds (subclasses override)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
