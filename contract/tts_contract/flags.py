"""Command-line flags made from a settings model's fields: the one helper of `tts-runtime` and `tts-operator`.

Each field of a pydantic-settings model is a flag `--field-name` whose help is the field's description;
`Annotated[..., Flag(...)]` gives it other spellings, a metavar, a help section, or keeps it environment-only.
Flags win over the environment; a flag left out keeps the environment's value or the default. Argparse, not
pydantic-settings' own CLI source (2.16): that one names a flag after the field's validation alias, which
for the agent is its downward-API variable (`--POD-NAME` instead of `--pod`); other spellings
(`--gpu-idle-timeout`, `--drain-timeout`) would have to be aliases too, renaming the environment variables.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from typing import Any, Literal, NoReturn, TypeVar, get_args, get_origin

from pydantic import AliasChoices, BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)


class Flag:
    """How one settings field appears on the command line (`Annotated[type, Flag(...)]`)."""

    __slots__ = ("env_only", "group", "metavar", "names")

    def __init__(
        self, *names: str, metavar: str | None = None, group: str | None = None, env_only: bool = False
    ) -> None:
        self.names = names  # spellings; none: `--field-name`
        self.metavar = metavar
        self.group = group  # a help section; `add_flags(..., groups=...)` picks fields by it
        self.env_only = env_only  # set by the environment alone (what the operator writes), no flag


def _flag(field: FieldInfo) -> Flag:
    return next((m for m in field.metadata if isinstance(m, Flag)), Flag())


def flag_names(name: str, field: FieldInfo) -> tuple[str, ...]:
    """The spellings of a field's flag, as given (default `--field-name`)."""
    return _flag(field).names or (f"--{name.replace('_', '-')}",)


def long_flag(name: str, field: FieldInfo) -> str:
    """The spelling that names a field's flag in messages: its first long one."""
    names = flag_names(name, field)
    return next((n for n in names if n.startswith("--")), names[0])


def env_name(model: type[BaseModel], name: str) -> str:
    """The environment variable that sets a field: its alias, else the model's prefix and its name."""
    alias = model.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        alias = next((c for c in alias.choices if isinstance(c, str)), None)
    if isinstance(alias, str):
        return alias
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a Literal, also inside `Literal[...] | None`."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(v for arg in get_args(annotation) if get_origin(arg) is Literal for v in get_args(arg))


def _help(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The description, then the default and the environment variable, both read from the field."""
    said = []
    default = field.default
    # None, False and [] say nothing a reader needs; a description that explains its default keeps it.
    shown = field.default_factory is None and default is not None and default is not False
    if shown and not field.is_required() and "default" not in (field.description or ""):
        said.append(f"default {default}")
    said.append(f"env {env_name(model, name)}")
    return f"{field.description or ''} ({', '.join(said)})".replace("%", "%%")


def add_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], groups: Collection[str] | None = None
) -> None:
    """One flag per field of `model` (help from its description), in its help section; with `groups`,
    only the fields of those sections. Environment-only fields get none."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for name, field in model.model_fields.items():
        flag = _flag(field)
        if flag.env_only or (groups is not None and flag.group not in groups):
            continue
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if flag.group:
            if flag.group not in sections:
                sections[flag.group] = parser.add_argument_group(flag.group)
            target = sections[flag.group]
        options: dict[str, Any] = {"dest": name, "default": None, "help": _help(model, name, field)}
        annotation, args = field.annotation, get_args(field.annotation)
        if annotation is bool:
            options["action"] = "store_true"
        elif bool in args and type(None) in args and len(args) == 2:
            options["action"] = argparse.BooleanOptionalAction  # --x / --no-x; neither keeps the default
        elif get_origin(annotation) is list:
            options.update(action="append", metavar=flag.metavar or name.upper())
        else:
            choices = _choices(annotation)
            options["metavar"] = flag.metavar or ("|".join(map(str, choices)) if choices else name.upper())
        target.add_argument(*flag_names(name, field), **options)


def settings_from_args(parser: argparse.ArgumentParser, model: type[M], args: argparse.Namespace) -> M:
    """The settings: environment, then the flags given. A wrong value exits 2 naming what the user set:
    the flag typed, else the flag and its environment variable."""
    fields = model.model_fields
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        return model(**given)
    except ValidationError as err:
        _exit_naming_flags(parser, model, given, err)


def _exit_naming_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], given: Collection[str], err: ValidationError
) -> NoReturn:
    problems = []
    for error in err.errors():
        msg = str(error["msg"]).removeprefix("Value error, ")
        name = str(error["loc"][0]) if error["loc"] else ""
        field = model.model_fields.get(name)
        if field is None:  # a rule across fields: its message names them
            problems.append(msg)
            continue
        flag = long_flag(name, field)
        if name in given:
            where = flag
        elif _flag(field).env_only:
            where = env_name(model, name)
        else:
            where = f"{flag} / {env_name(model, name)}"
        secret = SecretStr in (field.annotation, *get_args(field.annotation))
        got = "" if secret or "input" not in error else f" (got {error['input']!r})"
        problems.append(f"{where}: {msg}{got}")
    parser.error("; ".join(problems))
