"""The control topic: what running stages obey (labels, rollout mode, kill switch, thresholds), read, published and followed."""
