"""A workflow's Kubernetes manifests, derived from its topology: one StatefulSet per stage.

Written from the workflow (which topics each stage reads, how many partitions they have, what
the group is called), never copied by hand, so a new route, a new stage or a repartitioned
topic shows up in the manifests the next time ``handoff deploy k8s`` runs. Per stage:

* a **StatefulSet**: stable pod names (``<workflow>-<stage>-0``, ``-1``…) are the stage's
  ``--instance``, so a restarted pod is the same static group member and, under exactly_once,
  fences its predecessor's transactional id instead of waiting for it to time out. Liveness on
  ``/healthz`` (the loop is not stuck), readiness on ``/readyz`` (broker, assignment, restored
  state), a startup probe that gives start-up its own budget, and a termination grace period
  longer than a shutdown's drain, commit and group leave. Config from the workflow's ConfigMap,
  secrets (webhook secret, API keys, SASL password) from a Secret the operator creates. A stage
  with state (its partition-local stores, :mod:`processors.state`) gets a persistent volume per pod
  (``volumeClaimTemplates``) as ``HANDOFF_STATE_DIR``: a restarted pod finds its stores and their
  checkpoints and reads only the changelog written since, instead of whole changelogs;
* a headless **Service** (a StatefulSet's pods need one) that also names the metrics port;
* a **PodDisruptionBudget**: a node drain takes one pod of a stage at a time;
* a KEDA **ScaledObject** on the stage's consumer-group lag, from one replica up to the partition
  count of its widest input topic: a member beyond that would get no partition.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from processors.kafka.settings import KafkaSettings
from processors.providers.scripted import ScriptedProvider
from processors.runtime import metrics
from processors.runtime.options import Guarantee, RuntimeOptions, stage_group
from processors.stages.registry import build_stage, stages_for
from processors.workflow.workflow import Workflow

Manifest = dict[str, Any]
PART_OF = "handoff"  # app.kubernetes.io/part-of: what deploy/prometheus/kubernetes-scrape.yml keeps
METRICS_PORT_NAME = "metrics"
MODEL_STAGES = {"classify"}  # the stage that holds a model in memory and waits on it
STATE_DIR = "/var/lib/handoff/state"
USER_ID = 10001  # the Dockerfile's user: it owns the state volume (fsGroup)


class Target(BaseModel):
    """Where and how the manifests run: what differs between one cluster and another."""

    image: str = Field(description="The handoff image (built from the Dockerfile), pinned by tag or digest.")
    bootstrap_servers: str = Field(description="The Kafka bootstrap servers, as the pods and KEDA reach them.")
    topic_namespace: str = Field("", description="HANDOFF_NAMESPACE: the prefix of every topic and group name.")
    guarantee: Guarantee = Guarantee.at_least_once
    lag_threshold: int = Field(100, ge=1, description=(
        "KEDA's target lag per replica: KEDA adds replicas while the group's lag over its replicas is above it."))
    secret: str | None = Field(None, description="The Secret with the workflow's secrets (default: <workflow>-secrets).")
    state_size: str = Field("1Gi", description="The persistent volume of each pod of a stage with state.")


class StageShape(BaseModel):
    """What the manifests need to know of a stage: what it reads, and whether it keeps state."""

    inputs: list[str] = Field(description="Its input topics (declared names).")
    stateful: bool = Field(description="It keeps partition-local stores (Stage.tables).")


def dns_name(text: str) -> str:
    """``text`` as a Kubernetes object name (DNS-1123: lower case, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def topology(workflow: Workflow) -> dict[str, StageShape]:
    """Each stage's shape. The model plays no part in what a stage reads or keeps, so classify is built
    with a placeholder provider: no API key is needed to write manifests."""
    stages = {name.value: build_stage(name, workflow, ScriptedProvider()) for name in stages_for(workflow)}
    return {name: StageShape(inputs=stage.inputs, stateful=bool(stage.tables())) for name, stage in stages.items()}


def termination_grace_s(options: RuntimeOptions) -> int:
    """A SIGTERM drains in-flight records (``drain_timeout_s``), commits, then leaves the group, serving
    the revoke that brings for up to ``drain_timeout_s`` more and librdkafka's close (up to 5 s); the
    grace period covers all of it with room to spare, so the kubelet's SIGKILL never cuts a commit."""
    return int(2 * options.drain_timeout_s + 5) + 15


def manifests(workflow: Workflow, target: Target, options: RuntimeOptions | None = None) -> list[Manifest]:
    """The ConfigMap and every stage's objects, in the order ``kubectl apply`` wants them."""
    options = options or RuntimeOptions()
    settings = KafkaSettings(bootstrap_servers=target.bootstrap_servers, namespace=target.topic_namespace)
    config = f"{dns_name(workflow.name)}-config"
    out: list[Manifest] = [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": config, "labels": _labels(workflow)},
        "data": {"KAFKA_BOOTSTRAP_SERVERS": target.bootstrap_servers, "HANDOFF_NAMESPACE": target.topic_namespace,
                 "HANDOFF_METRICS_ADDR": "0.0.0.0", "HANDOFF_METRICS_PORT": str(metrics.DEFAULT_PORT),
                 "HANDOFF_LOG_FORMAT": "json"}}]
    for stage, shape in topology(workflow).items():
        partitions = max(workflow.topics[topic].partitions for topic in shape.inputs)
        group = settings.group_id(stage_group(workflow.name, stage, options))
        out += _stage(workflow, stage, shape, target, options, config, partitions, group)
    return out


def _labels(workflow: Workflow, stage: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/name": dns_name(workflow.name)}
    return labels | ({"app.kubernetes.io/component": stage} if stage else {})


def _stage(workflow: Workflow, stage: str, shape: StageShape, target: Target, options: RuntimeOptions, config: str,
           partitions: int, group: str) -> list[Manifest]:
    name = f"{dns_name(workflow.name)}-{stage}"
    labels = _labels(workflow, stage)
    model = stage in MODEL_STAGES
    probe = {"httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 5}
    container = {
        "name": "stage", "image": target.image, "imagePullPolicy": "IfNotPresent",
        "args": ["run", "--workflow", workflow.name, "--stage", stage, "--instance", "$(POD_NAME)",
                 "--guarantee", target.guarantee.value],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        + ([{"name": "HANDOFF_STATE_DIR", "value": STATE_DIR}] if shape.stateful else []),
        "envFrom": [{"configMapRef": {"name": config}},
                    {"secretRef": {"name": target.secret or f"{dns_name(workflow.name)}-secrets"}}],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": metrics.DEFAULT_PORT, "protocol": "TCP"}],
        "startupProbe": probe | {"failureThreshold": 30},  # five minutes to start: a model loads, a table restores
        "livenessProbe": probe | {"failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME}, "periodSeconds": 5,
                           "timeoutSeconds": 5, "failureThreshold": 2},
        "resources": {"requests": {"cpu": "500m" if model else "100m", "memory": "1Gi" if model else "256Mi"},
                      "limits": {"memory": "2Gi" if model else "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True},
    }
    state: dict[str, Any] = {}
    if shape.stateful:
        container["volumeMounts"] = [{"name": "state", "mountPath": STATE_DIR}]
        state = {"volumeClaimTemplates": [{"metadata": {"name": "state"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": target.state_size}}}}]}
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "labels": labels},
         "spec": {"clusterIP": "None", "selector": labels,
                  "ports": [{"name": METRICS_PORT_NAME, "port": metrics.DEFAULT_PORT, "targetPort": METRICS_PORT_NAME}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet",
         "metadata": {"name": name, "labels": labels},
         "spec": {"serviceName": name, "replicas": 1, "selector": {"matchLabels": labels},
                  "podManagementPolicy": "Parallel",  # members join at once; the group rebalances once
                  "template": {
                      "metadata": {"labels": labels, "annotations": {
                          "prometheus.io/scrape": "true", "prometheus.io/port": str(metrics.DEFAULT_PORT)}},
                      "spec": {"terminationGracePeriodSeconds": termination_grace_s(options),
                               "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                                                   "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
                               "containers": [container]}}} | state},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": name, "labels": labels},
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
         "metadata": {"name": name, "labels": labels},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name},
                  "minReplicaCount": 1, "maxReplicaCount": partitions, "pollingInterval": 15,
                  "cooldownPeriod": 300,
                  "triggers": [{"type": "kafka", "metadata": {
                      "bootstrapServers": target.bootstrap_servers, "consumerGroup": group,
                      "lagThreshold": str(target.lag_threshold), "offsetResetPolicy": "earliest",
                      "allowIdleConsumers": "false"}}]}},
    ]
