"""``handoff acls``: the ACLs each stage's principal needs on a secured cluster, printed or applied.

Derived from the workflow's topology (:mod:`processors.stages.access`): the topics each stage
reads and writes, its consumer group and its transactional-id prefix. ``--commands`` prints them as
``kafka-acls`` commands for whoever administers the cluster; ``--apply`` creates them through the
admin client, as the principal of ``--kafka-config`` (which must be allowed to alter ACLs).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from confluent_kafka import KafkaException

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, fail, load, need_broker
from processors.kafka import acls
from processors.stages.access import PRINCIPAL, grants
from processors.stages.registry import stages_for


def acls_(workflow: WorkflowName,
          stage: Annotated[Optional[list[str]], typer.Option(help="Only this stage (repeatable); default: all.")] = None,
          principal: Annotated[str, typer.Option(help="Each stage's principal; {workflow} and {stage} are filled in.")]
          = PRINCIPAL,
          commands: Annotated[bool, typer.Option("--commands", help="Print kafka-acls commands instead of a table.")]
          = False,
          apply: Annotated[bool, typer.Option("--apply", help="Create the ACLs through the admin client.")] = False,
          bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """The ACLs each stage's principal needs: topics it reads and writes, its group, its transactional ids."""
    flow, conf = load(workflow, bootstrap, workflows_dir)
    runs = stages_for(flow)  # the stages this workflow runs (ground only with lookups)
    stages = stage or runs
    unknown = sorted(set(stages) - set(runs))
    if unknown:
        raise fail(f"{workflow} runs no stage {unknown[0]!r}; its stages: {', '.join(runs)}")
    needed = [grant for name in stages for grant in grants(flow, name, conf, principal)]
    if apply:
        need_broker(flow, conf)
        try:
            created = acls.apply(conf, needed)
        except KafkaException as exc:
            raise fail(f"creating the ACLs as User:{conf.principal or 'this client'} failed: {exc.args[0].str()}")
        typer.echo(f"applied {created} ACL bindings for {len(stages)} stages of {workflow} at {conf.bootstrap_servers}")
        return
    for grant in needed:
        if commands:
            typer.echo(grant.command(conf.bootstrap_servers))
        else:
            typer.echo(f"{grant.principal:<40} {grant.resource:<16} {grant.pattern:<8} {grant.name:<48} "
                       f"{','.join(grant.operations):<16} {grant.why}")
