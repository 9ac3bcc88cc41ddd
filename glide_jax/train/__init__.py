"""Training: the jitted step, the loop around it, checkpoints, clean stops and the metrics it writes."""
