"""Flags made from settings fields (tts_contract.flags): spellings, tri-state booleans, sections, errors."""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tts_contract.flags import Flag, add_flags, settings_from_args


class Example(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXAMPLE_")

    size: Annotated[int, Flag("-s", "--size", metavar="N")] = Field(default=3, ge=1, description="how many")
    mode: Annotated[Literal["fast", "slow"], Flag(group="tuning")] = Field(default="fast", description="pace")
    cache: Annotated[bool | None, Flag(group="tuning")] = Field(default=None, description="use the cache")
    tag: list[str] = Field(default_factory=list, description="a tag (repeatable)")
    secret: SecretStr | None = Field(default=None, min_length=8, description="a password")
    internal: Annotated[float, Flag(env_only=True)] = Field(default=1.0, gt=0)


def parse(*argv: str, groups: list[str] | None = None) -> Example:
    parser = argparse.ArgumentParser(prog="example")
    add_flags(parser, Example, groups=groups)
    return settings_from_args(parser, Example, parser.parse_args(list(argv)))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SIZE", "MODE", "CACHE", "TAG", "SECRET", "INTERNAL"):
        monkeypatch.delenv(f"EXAMPLE_{name}", raising=False)


def test_every_field_but_the_env_only_one_is_a_flag_with_its_help_and_default() -> None:
    parser = argparse.ArgumentParser(prog="example")
    add_flags(parser, Example)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == {"size", "mode", "cache", "tag", "secret"}
    assert (
        actions["size"].option_strings == ["-s", "--size"]
        and actions["size"].help == "how many (default 3, env EXAMPLE_SIZE)"
    )
    assert actions["mode"].metavar == "fast|slow"
    assert actions["cache"].option_strings == ["--cache", "--no-cache"]
    assert "tuning" in parser.format_help()


def test_flags_win_over_the_environment_and_a_flag_left_out_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_CACHE", "true")
    monkeypatch.setenv("EXAMPLE_SIZE", "7")
    got = parse("--tag", "a", "--tag", "b", "--mode", "slow")
    assert (got.size, got.cache, got.tag, got.mode) == (7, True, ["a", "b"], "slow")
    assert parse("--no-cache", "-s", "2").cache is False
    assert parse("-s", "2").size == 2


def test_groups_pick_the_fields_of_their_sections() -> None:
    parser = argparse.ArgumentParser(prog="example")
    add_flags(parser, Example, groups=["tuning"])
    assert {a.dest for a in parser._actions if a.dest != "help"} == {"mode", "cache"}


@pytest.mark.parametrize(
    ("env", "argv", "said"),
    [
        ({}, ["--size", "0"], "--size: Input should be greater than or equal to 1 (got '0')"),
        ({"EXAMPLE_SIZE": "0"}, [], "--size / EXAMPLE_SIZE: Input should be greater"),
        ({"EXAMPLE_INTERNAL": "0"}, [], "error: EXAMPLE_INTERNAL: Input should be greater than 0"),
    ],
)
def test_a_wrong_value_exits_2_naming_what_the_user_set(
    env: dict[str, str],
    argv: list[str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as done:
        parse(*argv)
    assert done.value.code == 2 and said in capsys.readouterr().err


def test_a_secret_is_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--secret", "hunter2")
    err = capsys.readouterr().err
    assert "--secret:" in err and "hunter2" not in err
