"""CLI and settings: flags over `TTS_RUNTIME_*`, model sources, policy overrides, clear errors (exit 2)."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from tts_runtime import cli
from tts_runtime.settings import ConfigError, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TTS_RUNTIME_"):
            monkeypatch.delenv(key)


def settings_from(argv: list[str]) -> Settings:
    parser = cli.build_parser()
    return cli.load_settings(parser, parser.parse_args(argv))


def test_defaults_serve_hibari_on_port_8000_with_the_seed_policy() -> None:
    settings = settings_from(["serve"])
    assert (settings.host, settings.port, settings.device, settings.max_queue) == (
        "127.0.0.1",
        8000,
        "auto",
        64,
    )
    [spec] = settings.model_specs()
    assert (spec.name, spec.backend) == ("hibari", "hibari")
    policy = spec.policy
    assert (policy.offload_after_use, policy.idle_offload_seconds, policy.idle_release_seconds) == (
        True,
        600,
        3600,
    )
    assert policy.pinned is False
    assert settings.resolve_admin_token() is None


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_RUNTIME_PORT", "9000")
    monkeypatch.setenv("TTS_RUNTIME_DEVICE", "cuda")
    monkeypatch.setenv("TTS_RUNTIME_MAX_QUEUE", "5")
    settings = settings_from(["serve", "--port", "9100"])
    assert (settings.port, settings.device, settings.max_queue) == (9100, "cuda", 5)


def test_policy_flags_apply_to_every_model_and_the_seed_alias_works() -> None:
    settings = settings_from(
        [
            "serve",
            "--model",
            "hibari",
            "--model",
            "second=hibari",
            "--no-offload-after-use",
            "--gpu-idle-timeout",
            "120",
            "--idle-release-seconds",
            "0",
        ]
    )
    specs = settings.model_specs()
    assert [s.name for s in specs] == ["hibari", "second"]
    for spec in specs:
        assert spec.policy.offload_after_use is False
        assert spec.policy.idle_offload_seconds == 120
        assert spec.policy.idle_release_seconds == 0


def test_disable_gpu_management_pins_every_model() -> None:
    [spec] = settings_from(["serve", "--disable-gpu-management"]).model_specs()
    assert spec.policy.pinned is True


def test_plugin_model_flag_becomes_a_plugin_spec() -> None:
    [spec] = settings_from(["serve", "--model", "mine=my_pkg.voices:build"]).model_specs()
    assert (spec.name, spec.backend, spec.factory) == ("mine", "plugin", "my_pkg.voices:build")


def test_models_json_from_the_operator_keeps_its_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"models": [{"name": "hibari", "policy": {"offloadAfterUse": False, "idleOffloadSeconds": 30}}]}
    monkeypatch.setenv("TTS_RUNTIME_MODELS_JSON", json.dumps(doc))
    [spec] = settings_from(["serve"]).model_specs()
    assert spec.policy.offload_after_use is False and spec.policy.idle_offload_seconds == 30


def test_models_file_and_flag_combine_and_names_must_be_unique(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: hibari\n    voices: [heart]\n")
    assert [
        s.name
        for s in settings_from(["serve", "--models-file", str(path), "--model", "b=hibari"]).model_specs()
    ] == ["hibari", "b"]
    with pytest.raises(ConfigError, match="hibari"):
        settings_from(["serve", "--models-file", str(path), "--model", "hibari"]).model_specs()


def test_admin_token_file_is_generated_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "run" / "admin-token"
    settings = settings_from(["serve", "--admin-token-file", str(path)])
    token = settings.resolve_admin_token()
    assert token and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    assert settings.resolve_admin_token() == token


def test_admin_token_flag_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_RUNTIME_ADMIN_TOKEN", "from-env")
    assert settings_from(["serve"]).resolve_admin_token() == "from-env"
    assert settings_from(["serve", "--admin-token", "from-flag"]).resolve_admin_token() == "from-flag"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", "--port", "http"], "--port"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--device", "tpu"], "--device"),
        (["serve", "--max-queue", "0"], "--max-queue"),
        (["serve", "--idle-offload-seconds", "-5"], "--idle-offload-seconds"),
        (["serve", "--gpu-idle-timeout", "soon"], "--idle-offload-seconds"),
        (["serve", "--no-such-flag"], "--no-such-flag"),
        (["serve", "--log-level", "loud"], "--log-level"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        settings_from(argv)
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TTS_RUNTIME_PORT", "eighty")
    with pytest.raises(SystemExit):
        settings_from(["serve"])
    assert "TTS_RUNTIME_PORT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", "--model", "nonsense"], "--model"),
        (["serve", "--model", "x=not-a-factory"], "factory"),
        (["serve", "--models-file", "/nonexistent/models.yaml"], "/nonexistent/models.yaml"),
        (["serve", "--idle-offload-seconds", "inf"], "finite"),
        (
            [
                "serve",
                "--no-offload-after-use",
                "--idle-offload-seconds",
                "600",
                "--idle-release-seconds",
                "60",
            ],
            "idleReleaseSeconds must be 0",
        ),
    ],
)
def test_bad_model_sources_fail_with_a_message(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings_from(argv).model_specs()


def test_malformed_models_json_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_RUNTIME_MODELS_JSON", "{not json")
    with pytest.raises(ConfigError, match="TTS_RUNTIME_MODELS_JSON"):
        settings_from(["serve"]).model_specs()


def _dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_every_setting_is_a_flag_or_set_by_the_operator_and_each_is_documented() -> None:
    """The flags are the settings' fields (no second list to drift); docs/runtime.md names each one."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    serve, mcp = _dests(commands["serve"]), _dests(commands["mcp"])
    env_only = {"models_json", "gpu_memory_budget_bytes", "events_keepalive_seconds"}
    assert set(serve) == set(Settings.model_fields) - env_only
    assert set(mcp) < set(serve) and {"model", "device", "offload_after_use"} <= set(mcp)
    assert all(action.help for action in serve.values())
    doc = (Path(__file__).parents[2] / "docs" / "runtime.md").read_text()
    for name in Settings.model_fields:
        assert f"`TTS_RUNTIME_{name.upper()}`" in doc, name
        if name in serve:
            assert f"`{serve[name].option_strings[0]}" in doc, name


def test_the_runtime_reads_no_environment_at_import_time() -> None:
    """Settings are read once, in `main`: no module-level os.environ in the runtime package."""
    import ast

    import tts_runtime

    found = []
    for path in Path(tts_runtime.__file__).parent.rglob("*.py"):
        for stmt in ast.parse(path.read_text()).body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if "os.environ" in ast.unparse(stmt) or "getenv" in ast.unparse(stmt):
                found.append(f"{path.name}: {ast.unparse(stmt)[:80]}")
    assert not found, found


def test_the_env_names_the_operator_sets_are_runtime_settings() -> None:
    """The contract's names for the runtime's env (what builders.py writes) are fields of Settings."""
    import tts_contract

    names = [
        tts_contract.MODELS_JSON_ENV,
        tts_contract.ADMIN_TOKEN_ENV,
        tts_contract.ADMIN_TOKEN_FILE_ENV,
        tts_contract.GPU_MEMORY_BUDGET_ENV,
        tts_contract.DRAIN_TIMEOUT_ENV,
    ]
    for name in names:
        field = name.removeprefix(tts_contract.RUNTIME_ENV_PREFIX).lower()
        assert name.startswith(tts_contract.RUNTIME_ENV_PREFIX) and field in Settings.model_fields, name
