"""The ``handoff`` command line: one module per command group, assembled in :mod:`processors.cli.main`."""
