"""Classes by ``name``: the built-in layers, losses, optimizers and initializers, and users'
subclasses, registered as they are defined by a ``name`` in their class body, so that a saved
config rebuilds the same class (the class must be defined, or imported, before loading)."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable
from difflib import get_close_matches
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
        self._loadable: set[tuple[type, str]] = set()  # users' configs checked to load back
        #: the object a saved config describes (set by the module of the kind)
        self.load: Callable[[dict], Any] = lambda config: construct(
            self.lookup(config.get("name")), {k: v for k, v in config.items() if k != "name"}
        )
        #: what a foreign object (a notebook's own class) is in fastnet ("" where unknown)
        self.foreign_hint: Callable[[Any], str] = lambda obj: ""

    def register(self, cls: type) -> None:
        """Register ``cls`` under the ``name`` of its class body (none: not registered); a
        user's class records the arguments each instance is given (``record_arguments``)."""
        record_arguments(cls)
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
        config lacks an ``__init__`` argument it was given (required, or another value than
        its default) or holds a key its ``__init__`` does not take at another value than
        loading gives (``construct``)."""
        name, config, cls = self.saved_name(obj), obj.get_config(), type(obj)
        if not isinstance(config, dict) or config.get("name") != name:
            raise TypeError(
                f"{cls.__name__}.get_config() must return a dict with 'name': {name!r} (as "
                f"{{**super().get_config(), ...}} does), got {config!r}"
            )
        if _ours(cls):  # (fastnet's own classes save all)
            return config
        params = inspect.signature(cls).parameters.values()
        lost = [p.name for p in params if _lost(obj, p, config)]
        if lost:
            raise TypeError(
                f"{cls.__name__}.get_config() lacks its __init__ argument(s) {lost}: return "
                f"them ({{**super().get_config(), {lost[0]!r}: ...}}) so that copies, pickles "
                f"and checkpoints rebuild the same {self.kind}"
            )
        taken = _taken(cls)
        if taken is not None and set(config) - taken - {"name"}:
            self._check_loads(cls, config)
        return config

    def _check_loads(self, cls: type, config: dict) -> None:
        """Load ``config`` (its keys ``cls.__init__`` does not take checked by ``construct``),
        once per JSON config (a few hundred kept)."""
        try:
            key: tuple[type, str] | None = (cls, json.dumps(config, sort_keys=True))
        except (TypeError, ValueError):  # (not JSON: checked each time)
            key = None
        if key in self._loadable:
            return
        try:
            self.load(dict(config))
        except Exception as exc:
            raise TypeError(f"{cls.__name__}.get_config() does not load back: {exc}") from None
        if key is not None:
            self._loadable = set() if len(self._loadable) > 256 else self._loadable
            self._loadable.add(key)

    def lookup(self, name: Any, aliases: Iterable[str] = ()) -> Any:
        """The class registered as ``name``; else an error saying what was meant (a class for
        its instance, a close name among these and ``aliases``) and the known names."""
        if isinstance(name, str) and name in self:
            return self[name]
        if isinstance(name, type):
            hint = f"pass an instance, {name.__name__}(...), not the class"
        elif not isinstance(name, str):
            hint = self.foreign_hint(name) or (
                f"give a fastnet {self.kind} object (an instance of its class) or a name"
            )
        else:  # (a user's class registers under its name where it is defined)
            hint = f"a custom {self.kind}'s class must be defined before loading"
            close = get_close_matches(name, [*self, *aliases])
            hint += f"; or did you mean {' or '.join(map(repr, close))}?" if close else ""
        known = ", ".join([*self, *aliases])
        raise ValueError(f"unknown {self.kind} {name!r}: {hint}; known: {known}")


def _ours(cls: type) -> bool:
    """A class of fastnet's own modules (not a user's)."""
    return cls.__module__.partition(".")[0] == "fastnet"


def record_arguments(cls: type) -> None:
    """Make a user's class keep, per instance, the arguments its outermost ``__init__`` call
    was given (``_given``): what a config must hold to rebuild it."""
    init = cls.__dict__.get("__init__")
    if not inspect.isfunction(init) or _ours(cls):  # (a partialmethod: as it is)
        return
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        if "_given" not in self.__dict__:
            try:
                given = signature.bind(self, *args, **kwargs).arguments
                self.__dict__["_given"] = dict(list(given.items())[1:])  # (not self)
            except TypeError:
                pass  # (init says what is wrong)
        init(self, *args, **kwargs)

    cls.__init__ = recording  # type: ignore[misc]


def _lost(obj: Any, p: inspect.Parameter, config: dict) -> bool:
    """Whether ``__init__`` argument ``p`` is missing from ``config`` though required, or
    given another value than its default, or an attribute of its name holds another."""
    if p.name in config or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
        return False
    if p.default is p.empty:
        return True
    given = obj.__dict__.get("_given") or {}
    values = (given.get(p.name, p.default), getattr(obj, p.name, p.default))
    return any(not _equal(value, p.default) for value in values)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # (arrays)
        return a is b


def _taken(cls: type) -> set[str] | None:
    """The names of the arguments ``cls`` takes (None: any, a ``**kwargs``)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is not p.VAR_POSITIONAL}


def construct(cls: type, arguments: dict, unchecked: tuple[str, ...] = ()) -> Any:
    """``cls(**arguments)`` from a config (less its name). A user's class whose ``__init__``
    does not take some of them (a base class's keys, such as ``weight_decay``, that its
    ``__init__`` fixes) is built without them, and refused where it then holds other values
    than those (a typo, or a value the class cannot restore; ``unchecked``: keys the caller
    sets afterwards)."""
    taken = None if _ours(cls) else _taken(cls)
    if taken is None or set(arguments) <= taken:
        return cls(**arguments)
    obj = cls(**{k: v for k, v in arguments.items() if k in taken})
    values = obj.get_config()
    for key in set(arguments) - taken - set(unchecked):
        value = arguments[key]
        value = value.get_config() if hasattr(value, "get_config") else value
        if not _equal(values.get(key), value):
            raise TypeError(
                f"{cls.__name__} got {key}={value!r}, which its __init__ does not take "
                f"(built without it, it has {values.get(key)!r}): take {key!r} in "
                f"{cls.__name__}.__init__ and pass it on, or leave it out"
            )
    return obj
