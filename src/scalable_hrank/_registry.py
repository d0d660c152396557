"""A registry of named entries: curvature kinds and rank estimators each keep one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from scalable_hrank._validation import check_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name: each name registered once; the built-in ones are never removed.

    Args:
        option: The argument the names are given to (``"kind"``, ``"method"``); error
            messages name it.
        builtin: The names the package ships, in the order :meth:`names` lists them.
        reserved: Names no entry may take (``"auto"``, a policy rather than a method).
    """

    def __init__(self, option: str, builtin: tuple[str, ...],
                 reserved: tuple[str, ...] = ()) -> None:
        self.option = option
        self.builtin = builtin
        self.reserved = reserved
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; returns it.

        Raises:
            ValueError: ``name`` is reserved or already registered.
        """
        if name in self.reserved or name in self._entries:
            msg = f"a {self.option} named {name!r} is already registered (or reserved)"
            raise ValueError(msg)
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Remove an entry registered after import (no-op if absent).

        Raises:
            ValueError: ``name`` is built in.
        """
        if name in self.builtin:
            msg = f"the built-in {self.option} {name!r} cannot be removed"
            raise ValueError(msg)
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The built-in names in their order, then the others in registration order."""
        builtins = [name for name in self.builtin if name in self._entries]
        return (*builtins, *(name for name in self._entries if name not in self.builtin))

    def get(self, name: str) -> T:
        """The entry of ``name``.

        Raises:
            ValueError: No entry of that name (the message lists the known ones).
            TypeError: ``name`` is not a string.
        """
        return self._entries[check_choice(self.option, name, self.names())]

    def values(self) -> Iterator[T]:
        """The entries, in registration order."""
        return iter(list(self._entries.values()))
