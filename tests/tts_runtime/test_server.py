"""The HTTP routes against a real engine serving the tiny torch model (in-process, so tests stay fast)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from support.asgi import running
from support.decode import decode
from tts_runtime.settings import Settings

TINY_RATE = 16000


def tiny_settings(delay: float = 0.0, **overrides: Any) -> Settings:
    spec = {
        "name": "tiny",
        "backend": "torch",
        "factory": "support.tiny:factory",
        "execution": "inline",
        "voices": ["alto", "bass"],
        "defaultVoice": "alto",
        "options": {"delay_seconds": delay},
    }
    values: dict[str, Any] = {"models_json": json.dumps({"models": [spec]}), "device": "cpu", **overrides}
    return Settings(**values)


async def speak(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    payload = {"model": "tiny", "input": "Hello there.", "response_format": "wav", **body}
    return await client.post("/v1/audio/speech", json=payload)


async def state_of(client: httpx.AsyncClient, model: str = "tiny") -> str:
    report = (await client.get("/v1/residency")).json()
    return str(next(m for m in report["models"] if m["name"] == model)["state"])


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0) -> None:
    """Poll `check` (bounded) until it holds."""
    for _ in range(int(within / 0.01)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def wait_for(client: httpx.AsyncClient, state: str, within: float = 10.0) -> None:
    async def reached() -> bool:
        return await state_of(client) == state

    await until(reached, f"state {state!r}", within)


async def leases(client: httpx.AsyncClient) -> int:
    return int((await client.get("/v1/residency")).json()["models"][0]["leases"])


def assert_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for needle in needles:
        assert needle in error["message"], error["message"]
    assert "Traceback" not in response.text
    return dict(error)


# -- speech -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("wav", "audio/wav"),
        ("flac", "audio/flac"),
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg"),
        ("pcm", "audio/pcm"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_speech_in_every_format(fmt: str, media_type: str, stream: bool) -> None:
    async with running(tiny_settings()) as (_, client):
        response = await speak(client, response_format=fmt, stream=stream)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.headers["x-sample-rate"] == str(TINY_RATE)
    # Whole files carry their length; streamed ones are sent as they are made.
    assert ("content-length" in response.headers) is not stream
    if fmt == "pcm":
        samples = np.frombuffer(response.content, "<i2")
        assert len(response.content) % 2 == 0 and samples.size == 160 * len("Hello there.")
        assert np.abs(samples).max() > 0
        return
    if stream:
        decoded, rate = decode(response.content, fmt)
    else:
        decoded, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    assert decoded.size > 0 and np.abs(decoded).max() > 0.01
    if fmt in ("wav", "flac"):
        assert rate == TINY_RATE and decoded.size == 160 * len("Hello there.")


async def test_openai_names_and_extra_fields_are_accepted() -> None:
    async with running(tiny_settings()) as (_, client):
        response = await client.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "alloy",
                "input": "Hi!",
                "instructions": "cheerful",
                "some_future_openai_field": {"x": 1},
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "audio/mpeg"  # OpenAI's default format
        assert response.headers["x-model"] == "tiny"
        # The model's own voices work too, and change the audio.
        alto = await speak(client, voice="alto", response_format="pcm")
        bass = await speak(client, voice="bass", response_format="pcm")
        assert alto.content != bass.content


@pytest.mark.parametrize(
    ("body", "status", "needles"),
    [
        ({"input": ""}, 400, ["input is empty"]),
        ({"input": "   "}, 400, ["input is empty"]),
        ({"input": "a" * 4097}, 400, ["4096"]),
        ({"model": "nope"}, 404, ["'nope'", "tiny"]),
        ({"voice": "soprano"}, 400, ["soprano", "alto, bass"]),
        ({"response_format": "aac"}, 400, ["aac", "mp3, opus, flac, wav, pcm"]),
        ({"speed": 0.1}, 400, ["0.25", "4.0"]),
        ({"speed": 4.5}, 400, ["0.25", "4.0"]),
        ({"speed": "fast"}, 400, ["speed"]),
        ({"stream_format": "ogg"}, 400, ["'audio'", "'sse'"]),
        ({"input": None}, 400, ["input"]),
    ],
)
async def test_bad_input_is_a_4xx_saying_what_to_fix(
    body: dict[str, Any], status: int, needles: list[str]
) -> None:
    async with running(tiny_settings()) as (_, client):
        assert_error(await speak(client, **body), status, *needles)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"model": "tiny", "input": ', "not valid JSON"),
        (b'["a list"]', "JSON object"),
        (b'{"model": "tiny"}', "input"),
    ],
)
async def test_malformed_bodies_are_400(content: bytes, needle: str) -> None:
    async with running(tiny_settings()) as (_, client):
        response = await client.post(
            "/v1/audio/speech", content=content, headers={"content-type": "application/json"}
        )
        assert_error(response, 400, needle)


async def test_unknown_route_answers_the_error_shape() -> None:
    async with running(tiny_settings()) as (_, client):
        assert_error(await client.get("/v1/nothing-here"), 404)
        assert_error(await client.get("/v1/audio/speech"), 405)


# -- residency, models, admin verbs, policy -----------------------------------------------------------


async def test_models_and_residency_report_follow_a_request() -> None:
    async with running(tiny_settings()) as (_, client):
        listing = (await client.get("/v1/models")).json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["tiny"]
        assert listing["data"][0]["residency"]["state"] == "unloaded"  # nothing loads at start-up
        one = (await client.get("/v1/models/tiny")).json()
        assert one["id"] == "tiny" and one["residency"]["policy"]["offloadAfterUse"] is True
        assert (await speak(client)).status_code == 200
        await wait_for(client, "cpu")  # offload after use, the default
        report = (await client.get("/v1/residency")).json()
        line = report["models"][0]
        assert line["hostBytes"] > 0 and line["vramBytes"] == 0 and line["leases"] == 0
        assert line["lastUsed"] is not None and "load" in line["transitions"]
        assert report["gpu"] is None
        assert_error(await client.get("/v1/models/nope"), 404, "nope")


async def test_admin_verbs_move_the_model_through_its_states() -> None:
    async with running(tiny_settings()) as (_, client):
        assert (await client.post("/v1/models/tiny/load")).json()["state"] == "gpu"
        assert (await client.post("/v1/models/tiny/offload")).json()["state"] == "cpu"
        assert (await client.post("/v1/models/tiny/restore")).json()["state"] == "gpu"
        released = (await client.post("/v1/models/tiny/release")).json()
        assert (released["state"], released["hostBytes"]) == ("unloaded", 0)
        assert_error(await client.post("/v1/models/tiny/restore"), 409, "load")
        assert_error(await client.post("/v1/models/nope/offload"), 404, "nope")


async def test_policy_is_patched_partially_in_camel_case() -> None:
    async with running(tiny_settings()) as (_, client):
        response = await client.put("/v1/models/tiny/policy", json={"offloadAfterUse": False, "priority": 5})
        assert response.status_code == 200, response.text
        assert response.json() == {
            "offloadAfterUse": False,
            "idleOffloadSeconds": 600.0,
            "idleReleaseSeconds": 3600.0,
            "pinned": False,
            "priority": 5,
        }
        assert (await client.put("/v1/models/tiny/policy", json={"idle_offload_seconds": 30})).json()[
            "idleOffloadSeconds"
        ] == 30
        assert (await client.get("/v1/models/tiny/policy")).json()["priority"] == 5
        # The new policy governs: no offload after use now.
        assert (await speak(client)).status_code == 200
        await asyncio.sleep(0.3)
        assert await state_of(client) == "gpu"
        assert_error(
            await client.put("/v1/models/tiny/policy", json={"idleOffloadSeconds": -1}),
            400,
            "idleOffloadSeconds",
        )
        assert_error(
            await client.put("/v1/models/tiny/policy", json={"offloadSoon": True}), 400, "offloadSoon"
        )


@pytest.mark.parametrize(
    "body",
    [
        '{"idleReleaseSeconds": null}',
        '{"idleOffloadSeconds": 1e999}',
        '{"idleOffloadSeconds": Infinity}',
        '{"idleReleaseSeconds": NaN}',
        '{"priority": 5000}',
        '{"pinned": "yes"}',
        '{"priority": 2.5}',
        '{"offloadAfterUse": false, "idleReleaseSeconds": 5}',
    ],
)
async def test_a_policy_the_contract_refuses_is_a_400_and_changes_nothing(body: str) -> None:
    """Every write path validates with the contract's rules: nothing a monitor pass cannot plan is stored."""
    async with running(tiny_settings()) as (_, client):
        before = (await client.get("/v1/models/tiny/policy")).json()
        response = await client.put(
            "/v1/models/tiny/policy", content=body, headers={"content-type": "application/json"}
        )
        assert_error(response, 400)
        assert (await client.get("/v1/models/tiny/policy")).json() == before
        # The idle monitor still works: a use is followed by the offload-after-use, and status answers.
        assert (await speak(client)).status_code == 200
        await wait_for(client, "cpu")
        assert (await client.get("/gpu/status")).status_code == 200


async def test_legacy_timeout_that_breaks_the_release_rule_changes_no_model() -> None:
    async with running(tiny_settings()) as (_, client):
        policy = {"offloadAfterUse": False, "idleOffloadSeconds": 60, "idleReleaseSeconds": 120}
        put = await client.put("/v1/models/tiny/policy", json=policy)
        assert put.status_code == 200, put.text
        assert_error(await client.post("/gpu/timeout", json={"timeout": 600}), 400, "idleReleaseSeconds")
        assert_error(await client.post("/gpu/timeout", json={"timeout": "1e999"}), 400, "timeout")
        assert (await client.get("/v1/models/tiny/policy")).json()["idleOffloadSeconds"] == 60


async def test_requests_in_flight_finish_across_an_offload_and_a_policy_change() -> None:
    async with running(tiny_settings(delay=0.6)) as (_, client):
        request = asyncio.ensure_future(speak(client, response_format="pcm"))
        await wait_for(client, "gpu")

        async def leased() -> bool:
            return await leases(client) == 1

        await until(leased, "the request to hold its lease")
        policy = await client.put("/v1/models/tiny/policy", json={"idleReleaseSeconds": 1})
        offload = await client.post("/v1/models/tiny/offload")  # waits for the lease, then offloads
        response = await request
        assert response.status_code == 200 and len(response.content) == 2 * 160 * len("Hello there.")
        assert policy.status_code == 200
        assert offload.status_code == 200 and offload.json()["state"] == "cpu"


# -- auth ---------------------------------------------------------------------------------------------


ADMIN_CALLS = [
    ("POST", "/v1/models/tiny/load", None),
    ("POST", "/v1/models/tiny/offload", None),
    ("POST", "/v1/models/tiny/restore", None),
    ("POST", "/v1/models/tiny/release", None),
    ("PUT", "/v1/models/tiny/policy", {"pinned": True}),
    ("POST", "/gpu/offload", None),
    ("POST", "/gpu/release", None),
    ("POST", "/gpu/timeout", {"timeout": 5}),
    ("POST", "/api/v1/models/base/unload", None),
]


async def test_admin_routes_need_the_token_and_read_routes_do_not() -> None:
    async with running(tiny_settings(admin_token="s3cret")) as (_, client):
        for method, path, body in ADMIN_CALLS:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                response = await client.request(method, path, json=body, headers=headers)
                assert_error(response, 401, "Bearer")
                assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret"}
        for method, path, body in ADMIN_CALLS:
            response = await client.request(method, path, json=body, headers=good)
            assert response.status_code in (200, 409), (path, response.text)
        reads = (
            "/v1/residency",
            "/v1/models",
            "/gpu/status",
            "/api/v1/models/status",
            "/healthz",
            "/metrics",
        )
        for path in reads:
            assert (await client.get(path)).status_code == 200, path
        assert (await speak(client)).status_code == 200  # speech is never admin


async def test_admin_token_file_is_created_and_enforced(tmp_path: Any) -> None:
    path = tmp_path / "admin-token"
    async with running(tiny_settings(admin_token_file=path)) as (_, client):
        token = path.read_text().strip()
        assert_error(await client.post("/v1/models/tiny/load"), 401)
        response = await client.post("/v1/models/tiny/load", headers={"Authorization": f"Bearer {token}"})
        assert response.json()["state"] == "gpu"


# -- the original project's routes --------------------------------------------------------------------


async def test_legacy_routes() -> None:
    async with running(tiny_settings()) as (_, client):
        status = (await client.get("/gpu/status")).json()
        assert status["models"]["tiny"]["location"] == "unloaded"
        assert status["residency"]["models"][0]["name"] == "tiny"
        await client.post("/v1/models/tiny/load")
        legacy = (await client.get("/api/v1/models/status")).json()["tiny"]
        assert legacy["loaded"] is True and legacy["location"] == "GPU" and legacy["idle_timeout"] == 600
        offloaded = (await client.post("/gpu/offload")).json()
        assert offloaded["models"] == ["tiny"] and await state_of(client) == "cpu"
        assert (await client.post("/gpu/timeout", data={"timeout": "300"})).json()["timeout"] == 300
        assert (await client.get("/v1/models/tiny/policy")).json()["idleOffloadSeconds"] == 300
        # `curl -F timeout=300`, as the original documented: multipart form data.
        assert (await client.post("/gpu/timeout", files={"timeout": (None, "120")})).json()["timeout"] == 120
        assert (await client.post("/gpu/timeout", json={"timeout": 42})).status_code == 200
        assert (await client.get("/v1/models/tiny/policy")).json()["idleOffloadSeconds"] == 42
        assert_error(await client.post("/gpu/timeout", data={"timeout": "soon"}), 400, "timeout")
        assert_error(await client.post("/gpu/timeout", json={"timeout": -3}), 400, "timeout")
        unloaded = (await client.post("/api/v1/models/base/unload")).json()
        assert unloaded == {"status": "unloaded", "variant": "base", "models": ["tiny"]}
        assert await state_of(client) == "unloaded"
        assert_error(await client.post("/api/v1/models/awq/unload"), 404, "awq")
        await client.post("/v1/models/tiny/load")
        assert (await client.post("/gpu/release")).json()["models"] == ["tiny"]
        assert await state_of(client) == "unloaded"


# -- health, overload, metrics, traditional mode ------------------------------------------------------


async def test_health_and_readiness() -> None:
    async with running(tiny_settings()) as (app, client):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
        app.state.runtime.drain.begin()
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_a_full_queue_answers_503_with_retry_after() -> None:
    async with running(tiny_settings(delay=0.5, max_queue=1)) as (app, client):
        first = asyncio.ensure_future(speak(client))

        async def admitted() -> bool:
            return bool(app.state.runtime.admission.depth == 1)

        await until(admitted, "the first request to be admitted")
        second = await speak(client)
        error = assert_error(second, 503, "limit of 1")
        assert error["code"] == "queue_full" and second.headers["retry-after"] == "1"
        assert (await first).status_code == 200
        assert (await speak(client)).status_code == 200  # the slot is free again


async def test_metrics_count_requests_transitions_and_errors() -> None:
    async with running(tiny_settings()) as (_, client):
        await speak(client)
        await speak(client, input="")
        await wait_for(client, "cpu")
        text = (await client.get("/metrics")).text
    assert 'residency_model_state{model="tiny",state="cpu"} 1.0' in text
    assert 'residency_transitions_total{model="tiny",outcome="ok",verb="load"} 1.0' in text
    assert 'residency_transitions_total{model="tiny",outcome="ok",verb="offload"} 1.0' in text
    assert 'residency_transition_duration_seconds_count{model="tiny",outcome="ok",verb="load"} 1.0' in text
    assert 'residency_request_duration_seconds_count{format="wav",model="tiny",status="ok"} 1.0' in text
    assert 'residency_errors_total{kind="invalid_request"} 1.0' in text
    assert "residency_queue_depth 0.0" in text
    assert 'residency_host_bytes{model="tiny"}' in text


async def test_disable_gpu_management_preloads_and_keeps_models_on_gpu() -> None:
    async with running(tiny_settings(disable_gpu_management=True)) as (_, client):
        assert (await client.get("/readyz")).status_code == 200
        await wait_for(client, "gpu")
        assert (await client.get("/v1/models/tiny/policy")).json()["pinned"] is True
        assert (await speak(client)).status_code == 200
        await asyncio.sleep(0.3)
        assert await state_of(client) == "gpu"


async def test_hibari_refuses_an_unknown_voice_without_loading() -> None:
    async with running(Settings(device="cpu")) as (_, client):
        response = await client.post(
            "/v1/audio/speech", json={"model": "hibari", "input": "Hi.", "voice": "no-such-voice"}
        )
        assert_error(response, 400, "no-such-voice", "heart")
        assert await state_of(client, "hibari") == "unloaded"
