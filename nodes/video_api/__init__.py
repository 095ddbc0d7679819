"""Video-generation API nodes (Runway, Luma, Veo, Kling, Pika via fal, Sora) on one engine.

``engine`` (submit → poll → download, retries, deadline, cancel, progress), ``protocol``
(canonical states and the adapter interface), ``providers/`` (one thin adapter each),
``settings`` (keys and base URLs from the environment or ``user/secrets.yaml``), ``images``
(IMAGE → what providers accept), ``nodes`` (ComfyUI's node classes).
"""
