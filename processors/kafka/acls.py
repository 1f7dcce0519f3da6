"""Access on a secured cluster: the ACLs a principal needs, written out, applied, and checked.

A :class:`Grant` is one resource (a topic, a consumer group, a transactional-id prefix) with the
operations allowed on it and why. The grants a stage needs are derived from the workflow's
topology (:mod:`processors.stages.access`); here they become ``kafka-acls`` commands, Kafka ACL
bindings created through the admin client (``handoff acls --apply``), or a check.

**The check** runs as the stage's own principal before it starts, so a missing ACL fails in one
line naming the principal, the resource and the operation, instead of a stage that logs
authorization errors for ever or dead-letters every record. The broker says which operations
the caller may do on each topic and group (Kafka's authorized operations: ``describe_topics``
and ``describe_consumer_groups``), so nothing is tried for real. Only a grant on a named topic or
group can be asked about that way: a topic the principal may not describe shows no operations at
all, so a prefixed grant (``DescribeConfigs`` on the workflow's topics, without which the runtime
only logs that it could not read a limit) and a transactional id (which ``init_transactions``
checks itself when the stage starts) are not checked here.
"""

from __future__ import annotations

import time
from enum import StrEnum

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType
from pydantic import BaseModel, ConfigDict

from processors.kafka.broker import QUIET
from processors.kafka.settings import KafkaSettings

TIMEOUT_S = 10.0


class Resource(StrEnum):
    topic = "topic"
    group = "group"
    transactional_id = "transactional-id"


class Pattern(StrEnum):
    literal = "literal"
    prefixed = "prefixed"


class Operation(StrEnum):
    read = "Read"
    write = "Write"
    describe = "Describe"
    describe_configs = "DescribeConfigs"


_RESOURCE_TYPES = {Resource.topic: ResourceType.TOPIC, Resource.group: ResourceType.GROUP,
                   Resource.transactional_id: ResourceType.TRANSACTIONAL_ID}
_OPERATIONS = {Operation.read: AclOperation.READ, Operation.write: AclOperation.WRITE,
               Operation.describe: AclOperation.DESCRIBE, Operation.describe_configs: AclOperation.DESCRIBE_CONFIGS}


class Grant(BaseModel):
    """Operations allowed to a principal on one resource (a name, or every name with a prefix)."""

    model_config = ConfigDict(frozen=True)

    principal: str
    resource: Resource
    name: str
    operations: tuple[Operation, ...]
    pattern: Pattern = Pattern.literal
    why: str = ""

    def bindings(self) -> list[AclBinding]:
        return [AclBinding(_RESOURCE_TYPES[self.resource], self.name, ResourcePatternType[self.pattern.upper()],
                           self.principal, "*", _OPERATIONS[op], AclPermissionType.ALLOW) for op in self.operations]

    def command(self, bootstrap: str) -> str:
        """The ``kafka-acls`` command that creates this grant."""
        pattern = f" --resource-pattern-type {self.pattern}" if self.pattern == Pattern.prefixed else ""
        operations = "".join(f" --operation {op}" for op in self.operations)
        return (f"kafka-acls --bootstrap-server {bootstrap} --command-config admin.properties --add "
                f"--allow-principal {self.principal}{operations} --{self.resource} {self.name}{pattern}")


class AccessDenied(PermissionError):
    """The principal lacks an ACL; the message names the principal, the resource and the operation."""


def apply(settings: KafkaSettings, grants: list[Grant]) -> int:
    """Create every grant's ACL bindings (creating one that exists changes nothing); how many bindings."""
    bindings = [binding for grant in grants for binding in grant.bindings()]
    admin = settings.admin()  # kept until the futures resolve: a destroyed client fails them
    for future in admin.create_acls(bindings, request_timeout=TIMEOUT_S).values():
        future.result(timeout=TIMEOUT_S)
    return len(bindings)


def check(settings: KafkaSettings, grants: list[Grant]) -> None:
    """:class:`AccessDenied` for the first operation a grant on a named topic or group allows that this
    process's principal may not do (see the module docstring for what cannot be checked)."""
    admin = settings.admin(**QUIET)
    who = settings.principal or "this client"
    named = [g for g in grants if g.pattern == Pattern.literal and g.resource in (Resource.topic, Resource.group)]
    topics = sorted({g.name for g in named if g.resource == Resource.topic})
    groups = sorted({g.name for g in named if g.resource == Resource.group})
    allowed = {(Resource.topic, name): ops for name, ops in _authorized(
        lambda: admin.describe_topics(TopicCollection(topics), include_authorized_operations=True,
                                      request_timeout=TIMEOUT_S)).items()}
    if groups:
        allowed |= {(Resource.group, name): ops for name, ops in _authorized(
            lambda: admin.describe_consumer_groups(groups, include_authorized_operations=True,
                                                   request_timeout=TIMEOUT_S)).items()}
    for grant in named:
        for op in grant.operations:
            if _OPERATIONS[op] not in allowed[(grant.resource, grant.name)]:
                raise AccessDenied(f"principal User:{who} may not {op} {grant.resource} {grant.name} ({grant.why}): "
                                   f"`handoff acls` prints the ACLs each stage needs")


def _authorized(describe, attempts: int = 20) -> dict[str, set[AclOperation]]:
    """What the broker says the caller may do on each resource ``describe()`` asks about; nothing on one
    it refuses even to describe. Asked again while the broker is still electing a coordinator (a fresh
    cluster's first seconds)."""
    for attempt in range(attempts):
        try:
            return {name: _operations(future) for name, future in describe().items()}
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() not in _NOT_YET or attempt == attempts - 1:
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


_NOT_YET = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE)


def _operations(future) -> set[AclOperation]:
    try:
        return set(future.result(timeout=TIMEOUT_S).authorized_operations or [])
    except KafkaException as exc:
        if exc.args[0].code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
            return set()
        raise
