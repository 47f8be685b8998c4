"""How a component declares its options: once, as the fields of its settings class.

A settings class is a frozen dataclass made by ``@settings("section")`` whose
fields are ``option(...)``: the field's type, default and help are the
declaration. ``config.py`` reads the declarations to load, check and document
options (``config.example.toml`` and docs/configuration.md are generated from
them), so a new option is one field next to the code that uses it.

This module imports nothing of ours: every component can declare its options
without depending on the loader.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

_META = "avatarproxy.option"
# The types an option may have; ``list`` stands for tuple[str, ...] (comma-separated in env).
KINDS: dict[Any, type] = {str: str, int: int, float: float, bool: bool, tuple[str, ...]: list}


@dataclass(frozen=True, slots=True)
class Option:
    """One declared option, as the loader and the generated docs see it."""

    section: str
    key: str
    kind: type  # str, int, float, bool or list (of str)
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False

    @property
    def env_name(self) -> str:
        return f"AVATARPROXY_{self.section}_{self.key}".upper()

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


@dataclass(frozen=True, slots=True)
class _Spec:
    help: str
    minimum: float | None
    choices: tuple[str, ...]
    secret: bool


def option(default: Any, help: str, *, minimum: float | None = None,
           choices: tuple[str, ...] = (), secret: bool = False) -> Any:
    """A field of a settings class: its default, one sentence of help, and its bounds.

    ``secret`` options show as ``'***'`` in reprs and in configuration errors.
    """
    spec = _Spec(help, minimum, tuple(choices), secret)
    return dataclasses.field(default=default, metadata={_META: spec})


@dataclass_transform(frozen_default=True, field_specifiers=(option,))
def settings(section: str) -> Callable[[type[T]], type[T]]:
    """Make a settings class: a frozen dataclass of the options of ``[section]``."""
    def make(cls: type[T]) -> type[T]:
        cls.__repr__ = _masked_repr  # type: ignore[method-assign]
        made = dataclass(frozen=True, slots=True, repr=False)(cls)
        made.SECTION = section  # type: ignore[attr-defined]
        return made
    return make


def section_of(cls: type) -> str:
    section: str = cls.SECTION  # type: ignore[attr-defined]
    return section


def declared(cls: type) -> tuple[Option, ...]:
    """The options a settings class declares, in their order."""
    hints = typing.get_type_hints(cls)
    section = section_of(cls)
    found = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if not isinstance(spec, _Spec):
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with option(...)")
        kind = KINDS.get(hints[f.name])
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: options are str, int, float, bool "
                            f"or tuple[str, ...], not {hints[f.name]}")
        default = list(f.default) if kind is list else f.default  # type: ignore[arg-type]
        found.append(Option(section, f.name, kind, default, spec.help, spec.minimum,
                            spec.choices, spec.secret))
    return tuple(found)


def _masked_repr(self: Any) -> str:
    """Like the dataclass repr, but ``secret`` options show as ``'***'``.

    Settings end up in tracebacks, debuggers and log lines: never show a secret.
    """
    parts = []
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        spec = f.metadata.get(_META)
        if isinstance(spec, _Spec) and spec.secret and value:
            value = "***"
        parts.append(f"{f.name}={value!r}")
    return f"{type(self).__name__}({', '.join(parts)})"


def file_problem(key: str, path: str) -> str | None:
    """``key: no such file: path`` (or why it cannot be read); None when readable or unset."""
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        return f"{key}: no such file: {path}"
    except IsADirectoryError:
        return f"{key}: a directory, not a file: {path}"
    except OSError as exc:
        return f"{key}: cannot read {path}: {exc.strerror}"
    return None
