"""Classes by ``name``: the built-in layers, losses, optimizers and initializers, and users'
subclasses, registered as they are defined by a ``name`` in their class body, so that a saved
config rebuilds the same class (the class must be defined, or imported, before loading)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
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
        #: the object a saved config describes (set by the module of the kind)
        self.load: Callable[[dict], Any] = lambda config: construct(
            self.lookup(config.get("name")), {k: v for k, v in config.items() if k != "name"}
        )

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
        config lacks an ``__init__`` argument (required, set to another value than its
        default, or kept under another attribute name) or holds a key its ``__init__`` does
        not take (dropped where loading gives that value anyway, as the base classes' keys a
        user's ``__init__`` fixes)."""
        name, config, cls = self.saved_name(obj), obj.get_config(), type(obj)
        if not isinstance(config, dict) or config.get("name") != name:
            raise TypeError(
                f"{cls.__name__}.get_config() must return a dict with 'name': {name!r} (as "
                f"{{**super().get_config(), ...}} does), got {config!r}"
            )
        if _ours(cls):  # (fastnet's own classes save all)
            return config
        params = inspect.signature(cls).parameters
        lost = [p.name for p in params.values() if _lost(obj, p, config)]
        if lost:
            raise TypeError(
                f"{cls.__name__}.get_config() lacks its __init__ argument(s) {lost}: return "
                f"them (with 'name'), or keep each as an attribute of its own name (self."
                f"{lost[0]}), so that copies, pickles and checkpoints rebuild the same {self.kind}"
            )
        taken = _taken(cls)
        extra = [k for k in config if k != "name" and taken is not None and k not in taken]
        if extra:
            _check_rebuilt(cls, config, extra, self)
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
    """Whether ``__init__`` argument ``p`` is missing from ``config`` though required, set
    (an attribute of its name) to another value than its default, or kept under another
    name (no attribute of its name: its value cannot be told)."""
    if p.name in config or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
        return False
    if p.default is p.empty or not hasattr(obj, p.name):
        return True
    return not _equal(getattr(obj, p.name), p.default)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # (arrays)
        return a is b


def _taken(cls: type) -> set[str] | None:
    """The keyword arguments ``cls`` takes (None: any, a ``**kwargs``)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def construct(cls: type, arguments: dict) -> Any:
    """``cls(**arguments)`` from a config (less its name). A user's class is not given the
    keys its ``__init__`` does not take: keys of a base class's ``get_config`` whose values
    the user's ``__init__`` fixes (``Registry.checked_config`` made sure when saving)."""
    taken = None if _ours(cls) else _taken(cls)
    if taken is not None:
        arguments = {k: v for k, v in arguments.items() if k in taken}
    return cls(**arguments)


def _check_rebuilt(cls: type, config: dict, extra: list[str], registry: Registry) -> None:
    """Refuse ``config`` where the keys ``extra`` that ``cls.__init__`` does not take would
    load other values than ``config`` holds."""
    try:
        values = registry.load(dict(config)).get_config()
    except Exception as exc:
        raise TypeError(
            f"{cls.__name__}.get_config() does not rebuild it: loading it raised "
            f"{type(exc).__name__}: {exc}"
        ) from None
    differ = [k for k in extra if not _equal(values.get(k), config[k])]
    if differ:
        key = differ[0]
        raise TypeError(
            f"{cls.__name__}.get_config() holds {key}={config[key]!r}, which its __init__ "
            f"does not take: a copy, pickle or checkpoint would get {values.get(key)!r}; take "
            f"{key!r} in {cls.__name__}.__init__ (and pass it on) to keep the same "
            f"{registry.kind}"
        )
