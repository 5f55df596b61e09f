"""textsketch on a real local Ray cluster (Ray Serve, its HTTP proxy on 127.0.0.1, the real FastAPI apps).

One cluster for the module (``ray.init`` with 2 CPUs; each replica asks for a quarter CPU), configs
deployed with ``serve run --non-blocking`` from ``deploy/ray/serve-cpu.yaml``. The decoder replicas run
the real decoder app, scheduler, bitstream and sketch decoding over the fake model
(``services.testing.fakes``: flat images coloured by each job's seed, a fixed delay per batch), so the
tests are about serving: replicas, routing, redeploys, failures, autoscaling. The tests run in file
order and each starts from the deployment it needs.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import time

import httpx
import msgpack
import numpy as np
import pytest
from PIL import Image

from services.bitstream.container import Mode, parse
from services.profiles import get_profile
from services.testing.payloads import pic_payload, tiny_pics_payload
from services.testing.servers import free_port
from tests.paths import EXAMPLES

ray = pytest.importorskip("ray", reason="Ray Serve is the optional extra .[ray]; make setup installs it")

from ray_service.forwarding import payload_bucket  # noqa: E402
from ray_service.testing import FAKE_DECODER, BackgroundLoad, LocalServe, request_all, serve_config  # noqa: E402

pytestmark = pytest.mark.ray

ENV = {"TEXTSKETCH_FAKE_DELAY_S": "0.05", "TEXTSKETCH_DECODER_MAX_QUEUE_DELAY_MS": "20"}
ARGS = {"decoder_app": FAKE_DECODER}


def mixed_requests(n: int) -> list[tuple[str, bytes, dict]]:
    """Decodes of PIC payloads at three working sizes, PICS decodes and 2-candidate renderings, interleaved."""
    kinds = [
        ("/decode", pic_payload(width=96, height=64), {}),
        ("/decode", pic_payload(token_ids=(320, 530), width=64, height=96), {}),
        ("/decode", pic_payload(width=128, height=64, candidate=3), {}),
        ("/decode", tiny_pics_payload(), {}),
        ("/candidates", pic_payload(width=96, height=64), {"n": 2}),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    serve_cluster = LocalServe(tmp_path_factory.mktemp("ray"))
    serve_cluster.port = free_port()
    serve_cluster.url = f"http://127.0.0.1:{serve_cluster.port}"
    try:
        yield serve_cluster
    finally:
        serve_cluster.shutdown()


def deploy(cluster, decoder: dict, env: dict | None = None, **wait) -> None:
    cluster.deploy(serve_config(cluster.port, decoder=decoder, args=ARGS, env={**ENV, **(env or {})}))
    cluster.wait_running(cluster.url, **wait)


@pytest.fixture
def two_replicas(cluster):
    deploy(cluster, {"num_replicas": 2}, decoders=2)
    return cluster


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def images_of(path: str, body: bytes) -> list[np.ndarray]:
    if path == "/candidates":
        return [pixels(image) for image in msgpack.unpackb(body)["images"]]
    return [pixels(body)]


async def plain_decoder_answers(requests) -> dict:
    """The plain decoder app (same fake model) in this process: the expected images per request kind."""
    from decoder_service.settings import DecoderSettings
    from services.settings import CodecSettings
    from services.testing.fakes import create_fake_decoder_app
    from services.testing.servers import serving

    app = create_fake_decoder_app(DecoderSettings(codec=CodecSettings(profile="tiny"), warmup_batch_sizes=[1]))
    expected = {}
    async with serving(app) as client:
        for path, body, params in requests:
            key = (path, body, tuple(sorted(params.items())))
            if key not in expected:
                response = await client.post(path, content=body, params=params,
                                             headers={"Content-Type": "application/msgpack"})
                assert response.status_code == 200, response.text
                expected[key] = images_of(path, response.content)
    return expected


def assert_no_request_lost(answers) -> None:
    """Every answer is a 200 or a typed 429/503 with Retry-After: nothing hung, nothing untyped."""
    bad = [(a.status, a.error, a.headers.get("retry-after")) for a in answers if a.status != 200 and not a.typed_refusal()]
    assert not bad, f"{len(bad)} of {len(answers)} answers neither 200 nor a typed refusal: {bad[:5]}"


def test_two_decoder_replicas_serve_mixed_requests_with_the_plain_decoders_pixels(two_replicas):
    cluster = two_replicas
    requests = mixed_requests(50)
    # A cold scheduler admits one batch per bucket until it has measured its throughput: the client
    # retries those typed 429s after Retry-After, as TextSketchClient does.
    answers = asyncio.run(request_all(cluster.url, requests, concurrency=8, retries=5))
    assert [a.status for a in answers] == [200] * len(requests), [(a.status, a.error) for a in answers if a.status != 200]
    served_by = [a.headers["x-decoder-replica"] for a in answers]
    counts = {name: served_by.count(name) for name in set(served_by)}
    assert len(counts) == 2 and min(counts.values()) >= 5, counts  # both decoder replicas served
    assert all(name.startswith("SERVE_REPLICA::decoder#Decoder#") for name in counts)
    assert len({a.headers["x-encoder-replica"] for a in answers}) == 1
    # The bucket-affine router sends a request where jobs of its bucket (mode x working size) are in
    # flight, so most of a bucket lands on one replica; Ray's default router splits each bucket about
    # evenly (bench/ray_bench.py, docs/scaling.md). Affinity lapses when a bucket has nothing in flight,
    # hence a share over all buckets, not per bucket.
    profile = get_profile("tiny")
    by_bucket: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (_, body, _), answer in zip(requests, answers, strict=True):
        by_bucket[payload_bucket(body, profile)][answer.headers["x-decoder-replica"]] += 1
    assert len(by_bucket) == 4
    on_dominant = sum(max(replicas.values()) for replicas in by_bucket.values())
    print(f"bucket affinity: {on_dominant} of {len(requests)} requests on their bucket's main replica")
    assert on_dominant >= 0.75 * len(requests), {bucket: dict(replicas) for bucket, replicas in by_bucket.items()}
    expected = asyncio.run(plain_decoder_answers(requests))
    for (path, body, params), answer in zip(requests, answers, strict=True):
        got = images_of(path, answer.body)
        want = expected[(path, body, tuple(sorted(params.items())))]
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), path


def test_the_decoder_application_keeps_the_plain_decoders_contract(two_replicas):
    url = f"{two_replicas.url}/decoder"
    assert httpx.get(f"{url}/health/ready", timeout=10).json()["status"] == "ready"
    assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
    assert "textsketch_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text
    ok = httpx.post(f"{url}/decode", content=pic_payload(), headers={"Content-Type": "application/msgpack",
                                                                      "Accept": "image/webp"}, timeout=30)
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/webp"
    corrupt = httpx.post(f"{url}/decode", content=b"\x93garbage", headers={"Content-Type": "application/msgpack"},
                         timeout=30)
    assert corrupt.status_code == 422 and corrupt.json()["error"]
    # the same refusal through the encoder's forwarding (deployment handle), marked as the decoder's
    forwarded = httpx.post(f"{two_replicas.url}/decode", content=b"\x93garbage",
                           headers={"Content-Type": "application/msgpack"}, timeout=30)
    assert forwarded.status_code == 422 and forwarded.json() == corrupt.json()


def test_each_replica_exports_its_own_metrics_through_rays_prometheus_endpoint(two_replicas):
    """Ray's node metrics endpoint carries our textsketch_* samples once per replica (the replica tag)."""
    cluster = two_replicas
    seen: set[tuple[str, str]] = set()  # (deployment, replica) with textsketch samples in Ray's export

    def exported_by_all() -> bool:
        for line in exported(cluster):
            if line.startswith(("ray_textsketch_batch_size_count{", "ray_textsketch_requests_total{")):
                labels = dict(part.split("=", 1) for part in line.split("{", 1)[1].split("}", 1)[0].split(","))
                seen.add((labels["deployment"].strip('"'), labels["replica"].strip('"')))
        decoders = {replica for deployment, replica in seen if deployment == "Decoder"}
        return len(decoders) >= 2 and any(deployment == "Encoder" for deployment, _ in seen)

    cluster.wait_for(exported_by_all, 90, "textsketch metrics of both decoder replicas and the encoder in Ray's "
                     "export", poll_s=2)


def exported(cluster) -> list[str]:
    try:
        return httpx.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=10).text.splitlines()
    except httpx.HTTPError:
        return []


def test_a_killed_decoder_replica_fails_fast_or_retries_and_ray_restarts_it(two_replicas):
    cluster = two_replicas
    load = BackgroundLoad(cluster.url, mixed_requests(10), concurrency=4, timeout_s=60).start()
    try:
        cluster.wait_for(lambda: len(load.answers) >= 10, 60, "first answers")
        before = {a.headers.get("x-decoder-replica") for a in load.since(0) if a.status == 200}
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"))
        killed_at = time.monotonic()
        survivor_served = lambda: sum(  # noqa: E731
            a.status == 200 and a.headers.get("x-decoder-replica") not in (victim, None) for a in load.since(killed_at))
        cluster.wait_for(lambda: survivor_served() >= 10, 60, "the survivor serving after the kill")
        # Ray replaces the killed replica: two running again, and the new one serves.
        cluster.wait_for(lambda: cluster.replicas() == {"RUNNING": 2}, 120, "a replacement replica")
        seen_after = lambda: {a.headers.get("x-decoder-replica") for a in load.since(killed_at) if a.status == 200}  # noqa: E731
        cluster.wait_for(lambda: len(seen_after() - before) >= 1, 60, "the replacement serving")
    finally:
        answers = load.stop()
    assert victim not in seen_after()
    assert_no_request_lost(answers)
    assert max(a.seconds for a in answers) < 30, "a request hung on the killed replica"


def test_a_redeploy_with_a_changed_config_under_load_loses_no_request(two_replicas):
    cluster = two_replicas
    load = BackgroundLoad(cluster.url, mixed_requests(10), concurrency=8, timeout_s=60).start()
    try:
        cluster.wait_for(lambda: len(load.answers) >= 10, 60, "first answers")
        old = {a.headers.get("x-decoder-replica") for a in load.since(0) if a.status == 200}
        # A smaller queue and another batching delay: every replica of both applications is replaced.
        redeployed_at = time.monotonic()
        cluster.deploy(serve_config(cluster.port, decoder={"num_replicas": 2}, args=ARGS,
                                    env={**ENV, "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": "4",
                                         "TEXTSKETCH_DECODER_MAX_QUEUE_DELAY_MS": "30"}))
        new_serving = lambda: {a.headers.get("x-decoder-replica") for a in load.since(redeployed_at)  # noqa: E731
                               if a.status == 200} - old - {None}
        cluster.wait_for(lambda: len(new_serving()) == 2 and cluster.replicas() == {"RUNNING": 2}, 180,
                         "both new decoder replicas serving")
        settled_at = time.monotonic()
        cluster.wait_for(lambda: len(load.since(settled_at)) >= 20, 60, "load after the redeploy")
    finally:
        answers = load.stop()
    assert_no_request_lost(answers)
    assert sum(a.status == 200 for a in answers) >= 40
    assert {"queue_full", "overloaded"} >= {a.error for a in answers if a.status == 429}


def test_autoscaling_adds_a_decoder_replica_under_load_and_removes_it_when_idle(cluster):
    autoscaling = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                                          "upscale_delay_s": 0.5, "downscale_delay_s": 2, "look_back_period_s": 1}}
    deploy(cluster, autoscaling, env={"TEXTSKETCH_FAKE_DELAY_S": "0.2"}, decoders=1)
    load = BackgroundLoad(cluster.url, mixed_requests(10), concurrency=8, timeout_s=60).start()
    try:
        up_s = cluster.wait_for(lambda: cluster.replicas() == {"RUNNING": 2}, 90, "scale-up to 2 replicas")
    finally:
        answers = load.stop()
    down_s = cluster.wait_for(lambda: cluster.replicas() == {"RUNNING": 1}, 90, "scale-down to 1 replica")
    assert_no_request_lost(answers)
    assert sum(a.status == 200 for a in answers) >= 10
    print(f"autoscaling: 1 -> 2 after {up_s:.1f} s of load, 2 -> 1 after {down_s:.1f} s idle")


def test_real_tiny_models_on_ray_encode_a_photo_and_decode_it_as_the_plain_decoder(cluster):
    """The real encoder and decoder (tiny random models, not the fake) behind Ray: a Kodak photo encoded through
    the encoder deployment decodes to the same image as the plain decoder app draws from that payload.

    CPU float sums depend on the number of threads, and Ray starts a replica that asks for less than one
    CPU with one OpenMP thread; with one torch thread here too, the images are equal bit for bit (with
    this machine's two, one pixel in ten thousand differs by one level)."""
    cluster.deploy(serve_config(cluster.port, decoder={"num_replicas": 1},
                                env={"TEXTSKETCH_DECODER_MAX_BATCH_SIZE": "2"}))
    cluster.wait_running(cluster.url, 1, timeout_s=300)
    # A real encode through Ray first: the encoder deployment codes a Kodak photo (PICS, given prompt).
    encoded = httpx.post(f"{cluster.url}/encode", params={"mode": "pics", "prompt_source": "given",
                                                        "text": "a red door in a stone wall"},
                         content=(EXAMPLES / "kodim23.png").read_bytes(), headers={"Content-Type": "image/png"},
                         timeout=120)
    assert encoded.status_code == 200, encoded.text
    assert parse(encoded.content).mode == Mode.PICS and int(encoded.headers["x-payload-bytes"]) == len(encoded.content)
    payload = encoded.content
    through_encoder = httpx.post(f"{cluster.url}/decode", content=payload,
                                 headers={"Content-Type": "application/msgpack"}, timeout=120)
    direct = httpx.post(f"{cluster.url}/decoder/decode", content=payload,
                        headers={"Content-Type": "application/msgpack"}, timeout=120)
    assert through_encoder.status_code == 200 and direct.status_code == 200, through_encoder.text
    expected = asyncio.run(plain_real_decode(payload))
    assert np.array_equal(pixels(through_encoder.content), expected)
    assert np.array_equal(pixels(direct.content), expected)
    assert expected.std() > 0  # a drawn image, not a flat fake


def test_ray_gives_a_replica_of_less_than_one_cpu_one_thread(cluster):
    """What the bit-exact comparison above relies on, checked in a Ray task with the replicas' CPU request."""
    @ray.remote(num_cpus=0.25)
    def threads() -> str:
        return os.environ.get("OMP_NUM_THREADS", "")

    assert ray.get(threads.remote()) == "1"


async def plain_real_decode(payload: bytes) -> np.ndarray:
    import torch

    from decoder_service.app import create_app
    from decoder_service.settings import DecoderSettings
    from services.settings import CodecSettings
    from services.testing.servers import serving

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the replica (OMP_NUM_THREADS=1 from Ray)
    try:
        app = create_app(DecoderSettings(codec=CodecSettings(profile="tiny"), warmup_batch_sizes=[1]))
        async with serving(app) as client:
            response = await client.post("/decode", content=payload, headers={"Content-Type": "application/msgpack"},
                                         timeout=120)
            assert response.status_code == 200, response.text
            return pixels(response.content)
    finally:
        torch.set_num_threads(threads)
