"""Classes by ``name``: the built-in layers, losses, optimizers and initializers, and users'
subclasses, registered as they are defined by a ``name`` in their class body, so that a saved
config rebuilds the same class (the class must be defined, or imported, before loading)."""

from __future__ import annotations

from typing import Any


def same_class(a: type | None, b: type) -> bool:
    """The same class, or the same class defined again (a re-run notebook cell)."""
    return a is b or (
        a is not None and (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
    )


class Registry(dict):
    """``name -> class`` for one kind of object (``kind``: "layer", "loss", ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, cls: type) -> None:
        """Register ``cls`` under the ``name`` of its class body (none: not registered)."""
        name = cls.__dict__.get("name")
        if name is None:
            return
        known = self.get(name)
        if known is not None and not same_class(known, cls):  # (defined again: replaces it)
            raise TypeError(
                f"{self.kind} name {name!r} is taken by {known.__qualname__}: give "
                f"{cls.__qualname__} a name of its own"
            )
        self[name] = cls

    def saved_name(self, obj: Any) -> str:
        """``obj``'s name for a config, refused where it would load another class: a subclass
        that kept its parent's ``name`` (unless it sets ``saved_as_parent``, as Nesterov)."""
        cls, name = type(obj), obj.name
        if not (same_class(self.get(name), cls) or cls.__dict__.get("saved_as_parent")):
            raise TypeError(
                f"{cls.__name__} has no name of its own ({name!r} loads "
                f"{getattr(self.get(name), '__name__', 'nothing')}): set name = '...' in its "
                f"class body to save, copy or pickle models holding it"
            )
        return name

    def lookup(self, name: Any) -> Any:
        if not isinstance(name, str) or name not in self:
            raise ValueError(
                f"unknown {self.kind} {name!r} (a custom {self.kind}'s class must be defined "
                f"before loading); known: {', '.join(self)}"
            )
        return self[name]
