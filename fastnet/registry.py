"""Classes by ``name``: the built-in layers, losses, optimizers and initializers, and users'
subclasses, registered as they are defined by a ``name`` in their class body, so that a saved
config rebuilds the same class (the class must be defined, or imported, before loading)."""

from __future__ import annotations

import inspect
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

    def builtin(self) -> list[str]:
        """The names of fastnet's own classes (not users'), sorted."""
        return sorted(n for n, cls in self.items() if _ours(cls))

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

    def checked_config(self, obj: Any) -> dict:
        """``obj.get_config()``, refused where it would not load ``obj`` as it is: a subclass
        that kept its parent's ``name``, a config without that name, or a user's class whose
        ``get_config`` lacks an ``__init__`` argument (required, or set to another value than
        its default)."""
        name, config, cls = self.saved_name(obj), obj.get_config(), type(obj)
        if not isinstance(config, dict) or config.get("name") != name:
            raise TypeError(
                f"{cls.__name__}.get_config() must return a dict with 'name': {name!r} (as "
                f"{{**super().get_config(), ...}} does), got {config!r}"
            )
        if not _ours(cls):  # (fastnet's own classes save all)
            params = inspect.signature(cls).parameters.values()
            lost = [p.name for p in params if _lost(obj, p, config)]
            if lost:
                raise TypeError(
                    f"{cls.__name__}.get_config() lacks its __init__ argument(s) {lost}: return "
                    f"them (with 'name') so that copies, pickles and checkpoints rebuild the "
                    f"same {self.kind}"
                )
        return config

    def lookup(self, name: Any) -> Any:
        if not isinstance(name, str) or name not in self:
            raise ValueError(
                f"unknown {self.kind} {name!r} (a custom {self.kind}'s class must be defined "
                f"before loading); known: {', '.join(self)}"
            )
        return self[name]


def _ours(cls: type) -> bool:
    """A class of fastnet's own modules (not a user's)."""
    return cls.__module__.partition(".")[0] == "fastnet"


def _lost(obj: Any, p: inspect.Parameter, config: dict) -> bool:
    """Whether ``__init__`` argument ``p`` is missing from ``config`` though required or
    (an attribute of its name) set to another value than its default."""
    if p.name in config or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
        return False
    if p.default is p.empty:
        return True
    value = getattr(obj, p.name, p.default)
    try:
        return bool(value != p.default)
    except (TypeError, ValueError):  # (arrays)
        return value is not p.default
