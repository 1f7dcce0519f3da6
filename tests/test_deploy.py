"""What a platform team deploys: the Kubernetes manifests, the image's Dockerfile, the compose
file, the scrape config and the Grafana dashboard, each checked against what it must agree with.

No cluster and no Docker engine run here, so the manifests are validated against Kubernetes'
own JSON schemas (``kubernetes-validate``, which ships them: no network) and KEDA's ScaledObject
against a schema of the fields handoff writes (``tests/data``); the Dockerfile is read and
checked for what a build would not catch (a floating base, root, a secret); the training step it
runs is run here for real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

import processors.pipeline  # noqa: F401  every stage's and provider's metrics, registered
from processors.deploy import kubernetes
from processors.providers.embedded import EmbeddedProvider
from processors.runtime.options import RuntimeOptions
from processors.stages.registry import stages_for
from processors.workflow.workflow import load_workflow
from tests.conftest import WORKFLOWS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30.0"
KEDA = json.loads((Path(__file__).parent / "data/keda_scaledobject.schema.json").read_text())
TARGET = kubernetes.Target(image="handoff:0.1.0", bootstrap_servers="kafka:9092")


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def committed() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in documents(path.read_text())]


def validate(doc: dict) -> None:
    if doc["kind"] == "ScaledObject":
        jsonschema.validate(doc, KEDA)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def handoff(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "processors.cli", *args], capture_output=True, text=True,
                          timeout=300, env=os.environ | env)


def test_the_committed_manifests_are_what_the_generator_writes(tmp_path):
    """deploy/k8s/ is `handoff deploy k8s --workflow support_ticket --out deploy/k8s`: regenerate it, never edit it."""
    done = handoff("deploy", "k8s", "--workflow", "support_ticket", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml"))
    for path in tmp_path.iterdir():
        assert path.read_text() == (DEPLOY / "k8s" / path.name).read_text(), f"{path.name}: run the command above"


@pytest.mark.parametrize("workflow", ["support_ticket", "banking77"])
def test_every_manifest_validates_against_the_kubernetes_and_keda_schemas(workflow):
    flow = load_workflow(workflow, "", WORKFLOWS)
    generated = kubernetes.manifests(flow, TARGET)
    for doc in generated + (committed() if workflow == "support_ticket" else []):
        validate(doc)
    kinds = [doc["kind"] for doc in generated]
    assert kinds.count("StatefulSet") == kinds.count("ScaledObject") == kinds.count("PodDisruptionBudget") == len(stages_for(flow))


def test_a_misspelt_or_mistyped_field_fails_validation():
    """The validation is strict enough to matter: the schemas reject what a cluster would refuse or ignore."""
    sts, scaled = [d for d in kubernetes.manifests(load_workflow("support_ticket", "", WORKFLOWS), TARGET)
                   if d["kind"] in ("StatefulSet", "ScaledObject")][:2]
    broken = json.loads(json.dumps(sts))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    broken = json.loads(json.dumps(sts))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "100"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_each_stage_is_a_stateful_set_scaled_on_its_own_group_up_to_its_partitions():
    workflow = load_workflow("banking77", "", WORKFLOWS)
    options = RuntimeOptions()
    target = TARGET.model_copy(update={"topic_namespace": "prod"})
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in kubernetes.manifests(workflow, target):
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    (config,) = by_kind["ConfigMap"].values()
    shapes = kubernetes.topology(workflow)
    for stage in stages_for(workflow):
        name = f"banking77-{stage}"
        sts, pdb, scaled = by_kind["StatefulSet"][name], by_kind["PodDisruptionBudget"][name], by_kind["ScaledObject"][name]
        pod = sts["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        args = container["args"]
        # the pod's stable name is its --instance: static membership and the transactional id
        assert args[args.index("--stage") + 1] == stage and args[args.index("--instance") + 1] == "$(POD_NAME)"
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
        assert [ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]] \
            == [config["metadata"]["name"], "banking77-secrets"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert pod["spec"]["terminationGracePeriodSeconds"] > 2 * options.drain_timeout_s + 5
        assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
        assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
        trigger = scaled["spec"]["triggers"][0]["metadata"]
        assert trigger["consumerGroup"] == f"prod.handoff.banking77.{stage}"  # the group the runtime joins
        assert scaled["spec"]["maxReplicaCount"] == max(workflow.topics[t].partitions for t in shapes[stage].inputs)
        # a stage with stores keeps them on its pod's own volume, found again by the restarted pod
        claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        state_dir = {e["name"]: e.get("value") for e in container["env"]}.get("HANDOFF_STATE_DIR")
        assert (claims, state_dir) == ((["state"], mounts["state"]) if shapes[stage].stateful else ([], None))
        assert scaled["spec"]["minReplicaCount"] == 1 and trigger["allowIdleConsumers"] == "false"
    assert config["data"]["HANDOFF_NAMESPACE"] == "prod" and config["data"]["HANDOFF_METRICS_ADDR"] == "0.0.0.0"
    assert len(shapes["join"].inputs) > 1, "join reads its inbox and every decision topic"
    assert shapes["execute"].stateful and not shapes["route"].stateful


def test_the_kubernetes_scrape_job_keeps_the_pods_the_manifests_make():
    job = yaml.safe_load((DEPLOY / "prometheus/kubernetes-scrape.yml").read_text())["scrape_configs"][0]
    keeps = {rule["source_labels"][0]: rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"}
    sts = next(d for d in committed() if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]
    label = "app.kubernetes.io/part-of"
    assert keeps[f"__meta_kubernetes_pod_label_{re.sub(r'[^a-z0-9]', '_', label)}"] == pod["metadata"]["labels"][label]
    assert keeps["__meta_kubernetes_pod_container_port_name"] == pod["spec"]["containers"][0]["ports"][0]["name"]


def dashboard_expressions(workflow: str) -> list[str]:
    """Every query of deploy/grafana/handoff.json, its ``$workflow`` variable set to ``workflow`` (a regex)."""
    dashboard = json.loads((DEPLOY / "grafana/handoff.json").read_text())
    return [target["expr"].replace("$workflow", workflow) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_names_only_metrics_the_stages_export_or_the_rules_record():
    exported = {family.name + suffix for family in REGISTRY.collect()
                for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    recorded = {rule["record"] for group in yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    named = {name for expr in dashboard_expressions(".*") for name in re.findall(r"\bhandoff[_:][\w:]+", expr)}
    assert named - exported - recorded == set()
    for wanted in ("handoff_events_in_total", "handoff_consumer_lag", "handoff:review_rate:1h",
                   "handoff_dead_letters_total", "handoff_stage_latency_seconds_bucket", "handoff_tokens_total",
                   "handoff_cost_usd_total"):
        assert wanted in named, f"the dashboard shows no {wanted}"
    rules_named = {name for group in yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())["groups"]
                   for rule in group["rules"] for name in re.findall(r"\bhandoff_\w+", rule["expr"])}
    assert rules_named <= exported


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_the_dockerfile_is_pinned_non_root_and_trains_its_models_at_build_time():
    steps = dockerfile()
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert bases and all(re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", b) for b in bases), bases
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    after_user = final[[op for op, _ in final].index("USER"):]
    assert ("RUN", "handoff deploy models") in after_user, "models are trained as the user whose cache they fill"
    for op, args in steps:
        if op in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|API_KEY)\w*=", args, re.I), f"a secret in the image: {args}"
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!.venv" not in ignored  # only what is let back in reaches the build


def test_handoff_deploy_models_leaves_the_trained_model_where_a_process_loads_it(tmp_path):
    """The Dockerfile's training step, run for real with HOME in a temporary folder: the cache file it
    names is the one the embedded provider loads."""
    done = handoff("deploy", "models", "--workflow", "support_ticket", HOME=str(tmp_path))
    assert done.returncode == 0, done.stderr
    workflow = load_workflow("support_ticket", "", WORKFLOWS)
    provider = EmbeddedProvider(workflow.model.training, workflow.folder, cache_dir=tmp_path / ".cache/handoff")
    assert provider.cache_path.exists() and str(provider.cache_path) in done.stdout


def test_the_compose_file_runs_every_stage_and_prometheus_scrapes_each():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    stages = stages_for(load_workflow("support_ticket", "", WORKFLOWS))  # the compose file runs support_ticket
    for stage in stages:
        command = services[stage]["command"]
        assert command[:1] == ["run"] and command[command.index("--stage") + 1] == stage
        assert services[stage]["depends_on"] == {"topics": {"condition": "service_completed_successfully"}}
    targets = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]
    assert sorted(targets["targets"]) == sorted(f"{stage}:9464" for stage in stages)
    assert all(port.startswith("127.0.0.1:") for service in services.values() for port in service.get("ports", []))
    assert services["receiver"]["network_mode"] == "service:execute"
    assert services["execute"]["environment"]["HANDOFF_WEBHOOK_URL"].startswith("http://127.0.0.1:")
