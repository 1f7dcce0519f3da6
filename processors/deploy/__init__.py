"""Running handoff where production runs: the models an image carries, the Kubernetes manifests of a workflow."""
