"""Ray deployment files and the Ray pieces that need no cluster: the Serve configs against Ray's own
schema and our builders, the KubeRay RayService manifest against KubeRay's CRD schema (vendored,
deploy/ray/crd/), the bucket-affine router's policy, and the encoder's handle transport."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from types import SimpleNamespace

import httpx
import jsonschema
import pytest
import yaml

ray = pytest.importorskip("ray", reason="Ray Serve is the optional extra .[ray]; make setup installs it")

from ray.serve.schema import ServeDeploySchema  # noqa: E402

from ray_service.app import DecoderArgs, EncoderArgs, build_decoder, build_encoder  # noqa: E402
from ray_service.deployments import ADMISSION_HEADROOM, decoder_max_ongoing  # noqa: E402
from ray_service.forwarding import (  # noqa: E402
    ForwardedResponse,
    HandleTransport,
    payload_bucket,
    scheduler_bucket_label,
)
from ray_service.metrics import MetricsBridge  # noqa: E402
from ray_service.router import BUCKETS_STAT, BucketAffinityRouter  # noqa: E402
from services.profiles import get_profile  # noqa: E402
from services.testing.payloads import pic_payload, tiny_pics_payload  # noqa: E402

RAY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "ray"
CONFIGS = ["serve-cpu.yaml", "serve-gpu.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((RAY_DIR / name).read_text())


# -- Serve configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_serve_configs_validate_against_rays_schema_and_our_builders(name):
    config = ServeDeploySchema.model_validate(load(name))
    apps = {app.name: app for app in config.applications}
    assert set(apps) == {"decoder", "textsketch"}
    assert apps["decoder"].route_prefix == "/decoder" and apps["textsketch"].route_prefix == "/"
    assert apps["decoder"].import_path == "ray_service.app:build_decoder"
    DecoderArgs.model_validate(apps["decoder"].args)
    EncoderArgs.model_validate(apps["textsketch"].args)
    decoder = apps["decoder"].deployments[0]
    assert decoder.name == "Decoder" and decoder.autoscaling_config["min_replicas"] >= 1
    # the decoder's own back-pressure: never a fixed max_ongoing_requests in the config
    assert "max_ongoing_requests" not in load(name)["applications"][0]["deployments"][0]


def test_the_gpu_config_gives_each_decoder_replica_one_gpu_and_the_cpu_config_none():
    gpu = load("serve-gpu.yaml")["applications"][0]["deployments"][0]
    cpu = load("serve-cpu.yaml")["applications"][0]["deployments"][0]
    assert gpu["ray_actor_options"]["num_gpus"] == 1 and cpu["ray_actor_options"]["num_gpus"] == 0
    assert load("serve-cpu.yaml")["applications"][0]["runtime_env"]["env_vars"]["TEXTSKETCH_PROFILE"] == "tiny"


def test_the_decoder_builder_ties_max_ongoing_requests_to_the_schedulers_admission(monkeypatch):
    monkeypatch.setenv("TEXTSKETCH_DECODER_MAX_QUEUE_SIZE", "12")
    monkeypatch.setenv("TEXTSKETCH_DECODER_MAX_BATCH_SIZE", "3")
    app = build_decoder({"router": "power_of_two"})
    config = app._bound_deployment._deployment_config
    assert config.max_ongoing_requests == 12 + 3 + ADMISSION_HEADROOM
    assert config.request_router_config.request_router_class.endswith("PowerOfTwoChoicesRequestRouter")
    affine = build_decoder({"imbalance_threshold": 2})._bound_deployment._deployment_config.request_router_config
    assert affine.request_router_class == "ray_service.router:BucketAffinityRouter"
    assert affine.request_router_kwargs == {"imbalance_threshold": 2}
    from decoder_service.settings import DecoderSettings

    assert decoder_max_ongoing(DecoderSettings()) == config.max_ongoing_requests


@pytest.mark.parametrize("args", [{"router": "random"}, {"imbalance_threshold": -1}, {"routr": "power_of_two"}])
def test_bad_builder_args_are_refused_with_the_field_named(args):
    with pytest.raises(ValueError, match=next(iter(args))):
        build_decoder(args)
    with pytest.raises(ValueError, match="decoder_app"):
        build_encoder({"decoder_app": "x"})


# -- KubeRay RayService ----------------------------------------------------------------------------
def strict(schema):
    """The CRD schema with unknown fields refused (``additionalProperties: false`` on every object that lists
    its properties and does not preserve unknown fields), like the API server's strict field validation."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def rayservice_schema() -> dict:
    crd = yaml.safe_load(gzip.open(RAY_DIR / "crd" / "ray.io_rayservices.yaml.gz"))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((RAY_DIR / "rayservice.yaml").read_text())


def test_the_rayservice_manifest_validates_against_kuberays_crd_schema(rayservice_schema, manifest):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    jsonschema.Draft7Validator(rayservice_schema).validate(manifest)


@pytest.mark.parametrize("mistake", ["typo", "type", "missing"])
def test_the_crd_check_catches_mistakes(rayservice_schema, manifest, mistake):
    import copy

    broken = copy.deepcopy(manifest)
    cluster = broken["spec"]["rayClusterConfig"]
    if mistake == "typo":
        cluster["workerGroupSpecs"][0]["maxReplica"] = 8
    elif mistake == "type":
        cluster["workerGroupSpecs"][0]["replicas"] = "one"
    else:
        del cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(rayservice_schema).validate(broken)


def test_the_rayservice_serves_the_gpu_config_with_one_gpu_per_worker_and_the_pinned_ray(manifest):
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config["applications"] == load("serve-gpu.yaml")["applications"]
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    (worker,) = cluster["workerGroupSpecs"]
    resources = worker["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    decoder = serve_config["applications"][0]["deployments"][0]
    assert worker["maxReplicas"] == decoder["autoscaling_config"]["max_replicas"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert cluster["authOptions"] == {"mode": "token"}  # Ray 2.60 clusters use token auth; KubeRay manages it


# -- the bucket-affine router's policy --------------------------------------------------------------
def make_router(threshold: int = 2) -> BucketAffinityRouter:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    router = BucketAffinityRouter(DeploymentID(name="Decoder", app_name="decoder"), DeploymentHandleSource.UNKNOWN)
    router.initialize_state(imbalance_threshold=threshold)
    return router


def replica(name: str, buckets: dict | None = None):
    from ray.serve._private.common import DeploymentID, ReplicaID

    rid = ReplicaID(name, DeploymentID(name="Decoder", app_name="decoder"))
    return SimpleNamespace(replica_id=rid, routing_stats={BUCKETS_STAT: buckets or {}}, max_ongoing_requests=28)


def request(bucket: str | None, request_id: str = "r"):
    return SimpleNamespace(kwargs={} if bucket is None else {"bucket": bucket},
                           metadata=SimpleNamespace(internal_request_id=request_id))


def ranks(router, replicas, pending) -> list[list[str]]:
    chosen = asyncio.run(router.choose_replicas(replicas, pending))
    return [[r.replica_id.unique_id for r in rank] for rank in chosen]


def test_router_sends_a_bucket_to_the_replica_batching_it_within_the_threshold():
    router = make_router(threshold=2)
    a, b = replica("a"), replica("b", {"pic:512x512": 3})
    router.replica_queue_len_cache.update(a.replica_id, 0)
    router.replica_queue_len_cache.update(b.replica_id, 2)
    assert ranks(router, [a, b], request("pic:512x512")) == [["b"], ["a"]]
    assert ranks(router, [a, b], request("pics:512x768")) == [["a", "b"]]  # nobody holds it: least loaded
    assert ranks(router, [a, b], request(None)) == [["a", "b"]]
    router.replica_queue_len_cache.update(b.replica_id, 0)  # equal loads: either order, both seen
    assert {tuple(ranks(router, [a, b], request(None))[0]) for _ in range(64)} == {("a", "b"), ("b", "a")}
    router.replica_queue_len_cache.update(b.replica_id, 2)
    router.replica_queue_len_cache.update(b.replica_id, 3)  # 3 more than a: over the threshold
    assert ranks(router, [a, b], request("pic:512x512")) == [["a", "b"]]


def test_router_remembers_its_own_requests_until_they_complete():
    router = make_router(threshold=4)
    a, b = replica("a"), replica("b")
    router.on_request_routed(request("pic:512x512", "r1"), a.replica_id, None)
    assert ranks(router, [b, a], request("pic:512x512")) == [["a"], ["b"]]
    router.on_request_completed(a.replica_id, "r1")
    assert len(ranks(router, [b, a], request("pic:512x512"))) == 1  # no affinity any more: one rank by load


def test_router_refuses_a_bad_threshold():
    with pytest.raises(ValueError, match="imbalance_threshold"):
        make_router(threshold=-1)


# -- the encoder's handle transport ------------------------------------------------------------------
class FakeCall:
    """A ``DeploymentResponse`` stand-in: awaits to ``outcome`` (raised if an exception; None: never answers)."""

    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        return self._wait().__await__()

    async def _wait(self):
        if self.outcome is None:
            await asyncio.sleep(3600)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    """Records ``forward.remote`` calls; answers or raises as told."""

    def __init__(self, outcomes):
        self.outcomes, self.calls, self.made = list(outcomes), [], []
        self.forward = SimpleNamespace(remote=self._remote)

    def _remote(self, request, bucket=None):
        self.calls.append((request, bucket))
        self.made.append(FakeCall(self.outcomes.pop(0)))
        return self.made[-1]


def test_payload_buckets_are_mode_and_working_size():
    profile = get_profile("tiny")
    w, h = profile.working_size(96, 64)
    assert payload_bucket(pic_payload(width=96, height=64), profile) == f"pic:{w}x{h}"
    assert payload_bucket(tiny_pics_payload(), profile) == f"pics:{w}x{h}"
    assert payload_bucket(b"\x93garbage", profile) is None


def test_replicas_report_their_queued_buckets_under_the_labels_the_encoder_sends():
    from services.bitstream.container import parse
    from services.codec import payload_to_job

    profile = get_profile("tiny")
    for body in (pic_payload(width=128, height=64), tiny_pics_payload()):
        key = (int(profile.id), *payload_to_job(parse(body), profile).bucket_key())  # DecoderRuntime.bucket_key
        assert scheduler_bucket_label(key) == payload_bucket(body, profile)


def test_the_handle_transport_carries_the_request_and_maps_replica_failures():
    from ray.exceptions import ActorDiedError

    ok = ForwardedResponse(200, (("content-type", "image/png"), ("x-decoder-replica", "r2")), b"png")
    handle = FakeHandle([ActorDiedError(), ok])

    async def call(transport):
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            return await client.post("http://decoder.ray-serve/candidates", params={"n": 2}, content=pic_payload(),
                                     headers={"Accept": "image/png"})

    response = asyncio.run(call(HandleTransport(handle, get_profile("tiny"))))
    assert response.status_code == 200 and response.content == b"png" and response.headers["x-decoder-replica"] == "r2"
    assert len(handle.calls) == 2  # a replica that died: retried once, on whichever replica the router picks
    sent, bucket = handle.calls[-1]
    assert (sent.method, sent.path, sent.query, sent.body) == ("POST", "/candidates", "n=2", pic_payload())
    assert ("accept", "image/png") in sent.headers and bucket.startswith("pic:")
    dead = FakeHandle([ActorDiedError(), ActorDiedError()])
    with pytest.raises(httpx.ConnectError, match="ActorDiedError"):
        asyncio.run(call(HandleTransport(dead, get_profile("tiny"))))


# -- metrics mirrored into Ray's ---------------------------------------------------------------------
def test_the_metrics_bridge_mirrors_every_sample_with_its_labels():
    from services.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics("decoder")
    metrics.batch_done(3, 0.2, True)
    metrics.rejected("queue_full")
    gauges = {}

    class Gauge:
        def __init__(self, name, description, keys):
            self.keys, self.values = keys, {}
            gauges[name] = self

        def set(self, value, tags):
            assert tuple(sorted(tags)) == self.keys
            self.values[tuple(sorted(tags.items()))] = value

    bridge = MetricsBridge(metrics.registry, 1.0, Gauge)
    assert bridge.export_once() > 20
    assert gauges["textsketch_batch_size_sum"].values == {(("service", "decoder"),): 3.0}
    assert gauges["textsketch_batch_size_bucket"].keys == ("le", "service")
    assert gauges["textsketch_rejections_total"].values[(("reason", "queue_full"), ("service", "decoder"))] == 1.0
    assert not any(name.endswith("_created") for name in gauges)
    metrics.batch_done(1, 0.1, True)
    bridge.export_once()  # the same gauges again, updated
    assert gauges["textsketch_batch_size_sum"].values == {(("service", "decoder"),): 4.0}
    with pytest.raises(ValueError, match="period_s"):
        MetricsBridge(metrics.registry, 0)


def test_the_handle_transport_cancels_the_replicas_work_when_its_caller_leaves_or_times_out():
    async def leave_after(transport, seconds, timeout=5):
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            task = asyncio.ensure_future(client.post("http://decoder.ray-serve/decode", content=pic_payload()))
            await asyncio.sleep(seconds)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    gone = FakeHandle([None])
    asyncio.run(leave_after(HandleTransport(gone, get_profile("tiny")), 0.1))
    assert gone.made[0].cancelled

    slow = FakeHandle([None])

    async def time_out():
        async with httpx.AsyncClient(transport=HandleTransport(slow, get_profile("tiny")), timeout=0.2) as client:
            await client.post("http://decoder.ray-serve/decode", content=pic_payload())

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(time_out())
    assert slow.made[0].cancelled
