"""The development harness: the demo, the bench, the local JVM broker and loopback servers. Only the CLI (``handoff kafka up``) imports it."""
