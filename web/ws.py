"""The WebSocket hub: ComfyUI's ``/ws`` protocol, fed by runtime events from the worker thread.

Why it is built this way:

* Events are produced on the executor's worker thread.  ``on_event`` only posts them to the
  loop's :class:`~graph_runtime.loop_mailbox.LoopMailbox` (one wake-up per burst, shared with
  the runtime façade's completions); encoding and sending happen on the loop.  So execution
  never waits for a socket.
* Every socket has its own bounded backlog.  Messages for it are appended there and a flush
  is scheduled on the loop (once, however many arrive before it runs): the flush frames the
  whole backlog and writes it with one ``transport.write``.  No queue and no sender task per
  socket: a trivial prompt sends eleven messages, and waking a task for each cost more than
  encoding them.  While a socket is behind (its transport holds more than
  :data:`HIGH_WATER` bytes), the flush waits and superseded-anyway messages (preview frames,
  ``progress`` ticks) are skipped for it; a socket that stops reading fills its backlog and is
  then disconnected and forgotten (the frontend reconnects and re-reads the queue over HTTP)
  instead of letting memory grow or slowing the others.
* Each message is encoded once, whatever the number of recipients; progress_state events
  carry only the nodes that changed (see :class:`graph_runtime.events.ProgressState`),
  so traffic per prompt is linear in its number of nodes.

Addressing follows ComfyUI: a prompt's messages go to the socket whose id is the prompt's
``client_id``, or to every socket when the prompt has no client id; ``status`` (queue
size) always goes to everyone.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from typing import Any, Callable

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from graph_runtime.events import Event
from graph_runtime.loop_mailbox import LoopMailbox
from web.previews import encode_image, legacy_frame, metadata_frame, progress_text_frame
from web.wsframes import encode_frame

log = logging.getLogger(__name__)

DEFAULT_QUEUE_LIMIT = 8192
"""Messages a socket may have waiting before it is considered dead and closed."""

CLOSE_TIMEOUT = 2.0
MAX_BATCH = 512
"""Most messages framed into one transport write."""
HIGH_WATER = 256 << 10
"""Bytes buffered in the transport above which a socket's flush waits for its peer."""
DRAIN_POLL = 0.005


def _dumps(message: dict[str, Any]) -> str:
    """Compact JSON text; values JSON does not know are sent as their ``str`` (as ComfyUI does)."""
    return orjson.dumps(message, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def event_payload(event: Event) -> Any:
    """``event.data()``, without ``dataclasses.asdict``'s deep copy for events that do not
    customise it (their fields are plain JSON values, encoded right away): 20x cheaper."""
    if type(event).data is Event.data:
        return dict(event.__dict__)
    return event.data()


class Client:
    """One connected socket: its id, negotiated features and outgoing backlog."""

    __slots__ = ("sid", "ws", "transport", "backlog", "flags", "flush_scheduled", "closed")

    def __init__(self, sid: str, ws: web.WebSocketResponse, transport: Any = None) -> None:
        self.sid = sid
        self.ws = ws
        self.transport = transport
        self.backlog: deque[str | bytes] = deque()
        self.flags: dict[str, Any] = {}
        self.flush_scheduled = False
        self.closed = False

    @property
    def wants_preview_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))


class Hub:
    """All sockets of one server, and the bridge from runtime events to them."""

    def __init__(self, queue_remaining: Callable[[], int], server_features: dict[str, Any], *,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT, heartbeat: float = 30.0,
                 mailbox: LoopMailbox | None = None) -> None:
        self._queue_remaining = queue_remaining
        self.server_features = server_features
        self.queue_limit = queue_limit
        self.heartbeat = heartbeat
        self.clients: dict[str, Client] = {}
        self.log_subscribers: set[str] = set()
        self._mailbox = mailbox if mailbox is not None else LoopMailbox()
        # running prompts (several with Ray workers): prompt_id -> {client_id, node}
        self._running: dict[str, dict[str, Any]] = {}
        self.dropped_clients = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._mailbox.bind(loop)

    async def close_all(self) -> None:
        self._mailbox.bind(None)
        clients = list(self.clients.values())
        self.clients.clear()
        await asyncio.gather(*(self._close(c, WSCloseCode.GOING_AWAY, b"server shutdown") for c in clients),
                             return_exceptions=True)

    # -- producers (any thread) ----------------------------------------------------------------
    def on_event(self, event: Event, client_id: str | None) -> None:
        """Runtime listener: queue the event for the loop (never blocks, never raises)."""
        self._post(("event", event, client_id))

    def post_log(self, entry: dict[str, str]) -> None:
        if self.log_subscribers:
            self._post(("log", entry))

    def send_threadsafe(self, type_: str, data: Any, sid: str | None = None) -> None:
        """Send a custom JSON message from any thread (to ``sid``, or to all)."""
        self._post(("custom", type_, data, sid))

    def _post(self, item: tuple[Any, ...]) -> None:
        self._mailbox.post(self._deliver, item)

    # -- the loop side -------------------------------------------------------------------------
    def _deliver(self, item: tuple[Any, ...]) -> None:
        try:
            kind = item[0]
            if kind == "event":
                self._dispatch(item[1], item[2])
            elif kind == "log":
                self._send_logs(item[1])
            else:
                self.send(item[1], item[2], item[3])
        except Exception:
            log.exception("could not deliver %r", item[:2])

    def _targets(self, client_id: str | None) -> list[Client]:
        if client_id:
            client = self.clients.get(client_id)
            return [client] if client is not None else []
        return list(self.clients.values())

    def _dispatch(self, event: Event, client_id: str | None) -> None:
        kind = event.type
        self._track_running(event, client_id)
        if kind == "preview":
            self._send_preview(event, self._targets(client_id))
            return
        if kind == "progress_text":
            # cumulative text: a frame skipped while the socket is behind is superseded by the next
            frame = progress_text_frame(event.display_node_id or event.node_id, event.text)
            for client in self._targets(client_id):
                self._offer(client, frame, lossy=True)
            return
        targets = list(self.clients.values()) if kind == "status" else self._targets(client_id)
        if not targets:
            return
        text = _dumps({"type": kind, "data": event_payload(event)})
        lossy = kind == "progress"
        for client in targets:
            self._offer(client, text, lossy=lossy)

    def _track_running(self, event: Event, client_id: str | None) -> None:
        kind = event.type
        if kind == "execution_start":
            self._running[event.prompt_id] = {"client_id": client_id, "node": None}
        elif kind == "executing":
            running = self._running.get(event.prompt_id)
            if running is None:
                return
            node = getattr(event, "node", None)
            if node is None:
                del self._running[event.prompt_id]
            else:
                running["node"] = node

    def _send_preview(self, event: Any, targets: list[Client]) -> None:
        if not targets or event.image is None:
            return
        data, mime = encode_image(event.image, getattr(event, "image_format", "JPEG"))
        legacy = rich = None
        for client in targets:
            if client.wants_preview_metadata:
                if rich is None:
                    rich = metadata_frame(data, mime, node_id=event.node_id, prompt_id=event.prompt_id,
                                          display_node_id=event.display_node_id or event.node_id)
                self._offer(client, rich, lossy=True)
            else:
                if legacy is None:
                    legacy = legacy_frame(data, mime)
                self._offer(client, legacy, lossy=True)

    def _send_logs(self, entry: dict[str, str]) -> None:
        from web.logbuffer import terminal_size

        text = _dumps({"type": "logs", "data": {"entries": [entry], "size": terminal_size()}})
        for sid in list(self.log_subscribers):
            client = self.clients.get(sid)
            if client is not None:
                self._offer(client, text)

    def send(self, type_: str, data: Any, sid: str | None = None) -> None:
        """Send a JSON message to ``sid`` (or to every socket) — call on the loop."""
        text = _dumps({"type": type_, "data": data})
        for client in self._targets(sid):
            self._offer(client, text)

    def subscribe_logs(self, sid: str, enabled: bool) -> None:
        (self.log_subscribers.add if enabled else self.log_subscribers.discard)(sid)

    def _offer(self, client: Client, message: str | bytes, *, lossy: bool = False) -> None:
        """Queue a message for a socket (call on the loop); ``lossy`` ones (previews, progress
        ticks) are skipped while the socket is behind, since the next one supersedes them anyway."""
        if client.closed:
            return
        backlog = client.backlog
        if lossy and len(backlog) >= self.queue_limit // 4:
            return
        if len(backlog) >= self.queue_limit:
            log.warning("websocket %s is not reading (%d messages waiting); closing it", client.sid, len(backlog))
            self.dropped_clients += 1
            self._forget(client)
            # No close handshake: a close frame would wait behind everything the peer did not read.
            if client.transport is not None:
                client.transport.abort()
            else:
                asyncio.ensure_future(self._close(client, WSCloseCode.TRY_AGAIN_LATER, b"client too slow"))
            return
        backlog.append(message)
        if not client.flush_scheduled:
            client.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, client)

    def _forget(self, client: Client) -> None:
        client.closed = True
        client.backlog.clear()
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        self.log_subscribers.discard(client.sid)

    async def _close(self, client: Client, code: int, message: bytes) -> None:
        self._forget(client)
        try:
            await asyncio.wait_for(client.ws.close(code=code, message=message), CLOSE_TIMEOUT)
        except Exception:  # the peer is gone or stuck: drop the connection
            if client.transport is not None:
                client.transport.abort()

    def _flush(self, client: Client) -> None:
        """Write a socket's backlog, many frames per write (scheduled by :meth:`_offer`).

        One system call per batch instead of one per message (each one also hands the GIL to
        the executor thread).  Flow control: once the transport holds more than
        :data:`HIGH_WATER` bytes the peer has not read, nothing more is written until it drops
        below (checked every :data:`DRAIN_POLL` seconds); the backlog grows meanwhile, and a
        peer that never catches up is disconnected by :meth:`_offer`.
        """
        client.flush_scheduled = False
        transport = client.transport
        if client.closed:
            return
        if transport is None or transport.is_closing():
            client.closed = True
            return
        backlog = client.backlog
        if backlog:
            count = min(len(backlog), MAX_BATCH)
            try:
                transport.write(b"".join(encode_frame(backlog.popleft()) for _ in range(count)))
            except Exception as exc:  # the peer went away mid-send
                log.debug("websocket %s send failed: %s", client.sid, exc)
                client.closed = True
                return
        loop = asyncio.get_running_loop()
        if transport.get_write_buffer_size() > HIGH_WATER:
            client.flush_scheduled = True  # no flush until the peer reads
            loop.call_later(DRAIN_POLL, self._flush_when_drained, client)
        elif backlog:
            client.flush_scheduled = True
            loop.call_soon(self._flush, client)

    def _flush_when_drained(self, client: Client) -> None:
        transport = client.transport
        if client.closed or transport is None or transport.is_closing():
            client.closed = True
            return
        if transport.get_write_buffer_size() > HIGH_WATER:
            asyncio.get_running_loop().call_later(DRAIN_POLL, self._flush_when_drained, client)
            return
        self._flush(client)

    # -- the /ws handler -----------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # No permessage-deflate: the messages are small JSON or JPEG, and compressing each
        # one costs more CPU than the bytes it saves on a local connection.
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        old = self.clients.get(sid)
        if old is not None:
            await self._close(old, WSCloseCode.POLICY_VIOLATION, b"replaced by a new connection")
        client = Client(sid, ws, request.transport)
        self.clients[sid] = client
        self._offer(client, _dumps({"type": "status", "data": {
            "status": {"exec_info": {"queue_remaining": self._queue_remaining()}}, "sid": sid}}))
        for prompt_id, running in list(self._running.items()):
            if running["client_id"] == sid and running["node"] is not None:
                self._offer(client, _dumps({"type": "executing", "data": {
                    "node": running["node"], "display_node": running["node"], "prompt_id": prompt_id}}))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(client, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.debug("websocket %s error: %s", sid, ws.exception())
        finally:
            if self.clients.get(sid) is client:
                self._forget(client)
            else:
                client.closed = True
        return ws

    def _on_text(self, client: Client, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            data = message.get("data")
            client.flags = dict(data) if isinstance(data, dict) else {}
            self._offer(client, _dumps({"type": "feature_flags", "data": self.server_features}))
