"""A choice a thread may force for a while (tests, benchmarks): the matmul path, the kernel."""

from __future__ import annotations

import contextlib
import threading


class Forcing:
    """`with forcing.use(name)` forces `name` (one of `choices`) in this thread; None restores the rule."""

    def __init__(self, what: str, choices):
        self.what, self.choices, self._local = what, tuple(choices), threading.local()

    @property
    def name(self) -> str | None:
        """The choice this thread forces now, or None."""
        return getattr(self._local, "name", None)

    @contextlib.contextmanager
    def use(self, name: str | None):
        if name is not None and name not in self.choices:
            raise ValueError(f"unknown {self.what} {name!r}; choose from {', '.join(self.choices)}")
        previous, self._local.name = self.name, name
        try:
            yield
        finally:
            self._local.name = previous
