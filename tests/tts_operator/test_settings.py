"""Operator and agent settings: read once from the environment and the flags; the flags are the fields."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from tts_contract.flags import add_flags, settings_from_args
from tts_operator import settings as settings_module
from tts_operator.settings import AgentSettings, OperatorSettings

OPERATOR = Path(settings_module.__file__).parent


Model = type[OperatorSettings] | type[AgentSettings]


def parse(model: Model, *argv: str) -> OperatorSettings | AgentSettings:
    parser = argparse.ArgumentParser(prog="t")
    add_flags(parser, model)
    return settings_from_args(parser, model, parser.parse_args(list(argv)))


def test_the_environment_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESIDENCY_STATUS_SECONDS", "2.5")
    monkeypatch.setenv("RESIDENCY_RUNTIME_IMAGE", "reg/runtime:1")
    got = parse(OperatorSettings, "--status-seconds", "0.25", "-n", "a", "-n", "b", "-v")
    assert isinstance(got, OperatorSettings)
    assert (got.status_seconds, got.runtime_image, got.namespace, got.verbose) == (
        0.25,
        "reg/runtime:1",
        ["a", "b"],
        True,
    )


def test_a_wrong_value_exits_naming_its_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESIDENCY_RECHECK_SECONDS", "0")
    with pytest.raises(SystemExit) as done:
        parse(OperatorSettings)
    assert done.value.code == 2 and "--recheck-seconds" in capsys.readouterr().err
    monkeypatch.delenv("RESIDENCY_RECHECK_SECONDS")
    with pytest.raises(SystemExit):
        parse(OperatorSettings, "-n", "a", "--all-namespaces")
    assert "exclude each other" in capsys.readouterr().err


def test_the_agent_takes_the_downward_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "voice-0")
    monkeypatch.setenv("POD_NAMESPACE", "tts")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    got = parse(AgentSettings, "--min-publish-interval", "0.5")
    assert isinstance(got, AgentSettings)
    assert (got.pod, got.namespace, got.log_level) == ("voice-0", "tts", "DEBUG")
    assert got.min_publish_interval == 0.5


@pytest.mark.parametrize("model", [OperatorSettings, AgentSettings])
def test_every_setting_is_a_documented_flag(model: Model) -> None:
    parser = argparse.ArgumentParser(prog="t")
    add_flags(parser, model)
    dests = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(dests) == set(model.model_fields)
    assert all(a.help for a in dests.values())


def test_nothing_reads_the_environment_at_import_time() -> None:
    """Settings are read once at start (tts-operator run / agent), never by a module-level os.environ."""
    found = []
    for path in OPERATOR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if "os.environ" in ast.unparse(stmt):
                found.append(f"{path.name}: {ast.unparse(stmt)[:80]}")
    assert not found, found
