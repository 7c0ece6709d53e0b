"""What the test's processes (control plane, node, provider, operator) share: a `with`
block starts them and stops them, whatever happened inside."""

from __future__ import annotations

from typing import Self


class Service:
    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
