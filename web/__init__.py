"""The HTTP + WebSocket layer: ComfyUI's API and the official canvas over a :class:`Runtime`.

``create_app(runtime)`` builds the aiohttp application (tests run it on 127.0.0.1 with an
ephemeral port); ``serve(args, paths, options)`` is the ``server.py serve`` command.
"""
