"""Security properties: explicit limits, no unsafe deserialisation or client-chosen URLs, auth, no secrets in logs."""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from decoder_service.app import create_app as create_decoder
from decoder_service.settings import DecoderSettings
from encoder_service.app import create_app as create_encoder
from encoder_service.settings import EncoderSettings
from services.bitstream.container import MAX_PAYLOAD_BYTES
from services.serving.http import bearer_token_ok
from services.settings import CodecSettings
from services.testing.fakes import FAKE_DECODER, POISON_TOKEN, PoisonReconstructor
from services.testing.payloads import pic_payload
from services.testing.servers import free_port, serving, start_process
from tests.paths import REPO

SERVICE_DIRS = ("services", "encoder_service", "decoder_service")
MSGPACK = {"Content-Type": "application/msgpack"}
SECRET = "s3cret-Token-6f1d2"
FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "urllib.request"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def service_sources() -> list[Path]:
    return sorted(p for d in SERVICE_DIRS for p in (REPO / d).rglob("*.py"))


def test_no_pickle_eval_exec_or_url_fetching_modules_in_service_code():
    problems = []
    for path in service_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{path}: import {a.name}" for a in node.names if a.name in FORBIDDEN_MODULES]
            elif isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN_MODULES:
                problems.append(f"{path}: from {node.module} import")
            elif isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                keywords = {k.arg: k.value for k in node.keywords}
                if isinstance(node.func, ast.Name) and name in FORBIDDEN_CALLS:
                    problems.append(f"{path}:{node.lineno}: {name}()")
                if name == "load" and ast.unparse(node.func).startswith("torch."):
                    flag = keywords.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        problems.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
                if name == "load" and "allow_pickle" in keywords:
                    flag = keywords["allow_pickle"]
                    if not (isinstance(flag, ast.Constant) and flag.value is False):
                        problems.append(f"{path}:{node.lineno}: np.load(allow_pickle=...)")
    assert len(service_sources()) > 20
    assert not problems, problems


def test_the_encoder_only_calls_the_configured_decoder_url():
    app = create_encoder(EncoderSettings(codec=CodecSettings(profile="tiny")))
    params = [p["name"] for p in app.openapi()["paths"]["/encode"]["post"]["parameters"]]
    assert "candidates" in params
    assert not [p for p in params if any(word in p.lower() for word in ("url", "host", "uri", "endpoint"))]
    source = (REPO / "encoder_service" / "app.py").read_text()
    tree = ast.parse(source)
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not [c for c in calls if c.startswith("httpx.") and c != "httpx.AsyncClient"]  # no ad-hoc fetches
    outgoing = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) in
                ("app.state.decoder.post", "app.state.decoder.get", "app.state.decoder.request",
                 "app.state.decoder.stream")]
    assert outgoing and all("settings.decoder_url" in ast.unparse(n.args[0]) for n in outgoing)


def test_auth_is_off_by_default_for_both_services(monkeypatch):
    for name in ("TEXTSKETCH_ENCODER_AUTH_TOKEN", "TEXTSKETCH_DECODER_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert EncoderSettings().auth_token is None
    assert DecoderSettings().auth_token is None
    assert "auth_token" in (REPO / "docs" / "services.md").read_text().lower() or \
        "AUTH_TOKEN" in (REPO / "docs" / "services.md").read_text()


@pytest.mark.parametrize(("header", "token", "ok"), [
    (None, None, True), ("anything", None, True), (None, SECRET, False), (f"Bearer {SECRET}", SECRET, True),
    (f"Bearer {SECRET}x", SECRET, False), (f"bearer {SECRET}", SECRET, False), ("Bearer ", SECRET, False),
    ("Bearer s3cret-Tokén", SECRET, False),  # non-ASCII is a plain mismatch, not a 500
])
def test_bearer_token_check(header, token, ok):
    assert bearer_token_ok(header, token) is ok


def test_encoder_auth_rejects_before_reading_the_upload(tmp_path):
    app = create_encoder(EncoderSettings(codec=CodecSettings(profile="tiny", cache_dir=tmp_path, prompt_source="given"),
                                         auth_token=SECRET))

    async def main():
        async with serving(app) as client:
            without = await client.post("/encode", content=b"x" * 100, headers={"Content-Type": "image/png"})
            non_ascii = await client.post("/encode", content=b"x", headers={"Content-Type": "image/png",
                                                                             "Authorization": "Bearer é".encode("latin-1")})
            health = await client.get("/health/ready")
            return without, non_ascii, health

    without, non_ascii, health = asyncio.run(main())
    assert without.status_code == 401 and without.headers["www-authenticate"] == "Bearer"
    assert non_ascii.status_code == 401
    assert health.status_code == 200
    assert SECRET not in without.text


def test_request_body_limits_hold_with_and_without_content_length(tmp_path):
    settings = DecoderSettings(handle_sigterm=False, warmup_batch_sizes=[1],
                               codec=CodecSettings(profile="tiny", cache_dir=tmp_path))
    assert MAX_PAYLOAD_BYTES < settings.max_body_bytes <= 128 * 1024
    app = create_decoder(settings, reconstructor_factory=lambda p, c: PoisonReconstructor(p, c))

    async def chunks():
        for _ in range(200):
            yield b"\x00" * 1024

    async def main():
        async with serving(app) as client:
            declared = await client.post("/decode", content=b"\x00" * (settings.max_body_bytes + 1), headers=MSGPACK)
            streamed = await client.post("/decode", content=chunks(), headers=MSGPACK)
            return declared, streamed

    declared, streamed = asyncio.run(main())
    assert declared.status_code == 413 and declared.json()["error"] == "body_too_large"
    assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]


def test_tokens_never_reach_logs_or_error_bodies(tmp_path, caplog):
    env = {"TEXTSKETCH_CACHE_DIR": str(tmp_path / "cache"), "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
           "TEXTSKETCH_DECODER_AUTH_TOKEN": SECRET}
    decoder = start_process(FAKE_DECODER, env, tmp_path, log_level="debug")
    try:
        decoder.wait_ready(60)
        good = {**MSGPACK, "Authorization": f"Bearer {SECRET}"}
        wrong = httpx.post(f"{decoder.url}/decode", content=pic_payload(), timeout=10,
                           headers={**MSGPACK, "Authorization": f"Bearer {SECRET[:-1]}"})
        served = httpx.post(f"{decoder.url}/decode", content=pic_payload(), headers=good, timeout=10)
        failed = httpx.post(f"{decoder.url}/decode", content=pic_payload(token_ids=(POISON_TOKEN,)), headers=good,
                            timeout=10)
    finally:
        decoder.stop()
    assert (wrong.status_code, served.status_code, failed.status_code) == (401, 200, 500)
    log = decoder.log()
    assert "poisoned batch" in log  # the 500 was logged with its traceback ...
    assert SECRET not in log and SECRET[:-1] not in log  # ... and neither token was
    assert SECRET not in wrong.text + failed.text

    # The encoder's token for the decoder stays out of its error bodies and logs when the decoder is down.
    settings = EncoderSettings(codec=CodecSettings(profile="tiny", cache_dir=tmp_path / "cache", prompt_source="given",
                                                   clip_model="tiny"),
                               decoder_url=f"http://127.0.0.1:{free_port()}", decoder_token=SECRET)
    app = create_encoder(settings)

    async def main():
        async with serving(app) as client:
            return await client.post("/encode", params={"prompt_source": "given", "text": "a cat", "candidates": 2},
                                     content=pic_png(), headers={"Content-Type": "image/png"})

    with caplog.at_level(logging.DEBUG):
        response = asyncio.run(main())
    assert response.status_code == 503 and response.json()["error"] == "upstream_unavailable"
    assert SECRET not in response.text and SECRET not in caplog.text


def pic_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_settings_never_show_tokens_in_repr():
    from decoder_service.settings import DecoderSettings
    from encoder_service.settings import EncoderSettings

    shown = repr(DecoderSettings(auth_token="s3cret-d")) + str(EncoderSettings(auth_token="s3cret-e", decoder_token="s3cret-x"))
    assert "s3cret" not in shown
