"""Scale-out on Ray: one server, many GPU workers, one durable queue.

The server stays the single source of truth (SQLite queue and history, HTTP, WebSocket);
Ray only supplies processes that own a device and a way to talk to them.  Modules:

* :mod:`~graph_runtime.cluster.placement` — what a prompt needs: the model ids of its loader
  nodes (affinity) and whether it runs in the server process (network-bound prompts);
* :mod:`~graph_runtime.cluster.dispatch` — the affinity dispatcher, pure policy: which pending
  prompt goes to which idle worker;
* :mod:`~graph_runtime.cluster.messages` — the records that travel between server and worker;
* :mod:`~graph_runtime.cluster.outputs` — output files: shipped by the worker, landed in the
  server's output directory under collision-free names;
* :mod:`~graph_runtime.cluster.worker` — the worker (a Ray actor): its own executor, model
  manager and output cache, one prompt at a time, a control method beside it;
* :mod:`~graph_runtime.cluster.pool` — :class:`RayPool`, the "where prompts run" implementation
  that the runtime uses instead of its in-process worker thread;
* :mod:`~graph_runtime.cluster.ray_session` — joining or starting the Ray cluster.

Ray is an optional extra: nothing in this package imports ``ray`` at module level, and the
server imports this package only with ``--ray``.
"""
