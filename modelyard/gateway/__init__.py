"""The gateway (`modelyard gateway`): one OpenAI-compatible endpoint for every Model.

Kept apart like KubeAI's proxy / load balancer / autoscaler (STYLE.md item 15):
``autoscale`` and ``balance`` are pure arithmetic; ``registry`` holds what is routable;
``router`` is the HTTP proxy that holds requests while a Model scales from zero; ``scaler``
runs the autoscaler loop against a ``Backend`` (Kubernetes ``deployments/scale`` in a cluster,
start/stop callbacks in local mode). Imports ``api`` and ``apikeys`` only, never ``runtime``
engines nor ``operator``.
"""
