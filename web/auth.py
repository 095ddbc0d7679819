"""Who is calling: bearer tokens off loopback, the browser's session cookie, multi-user identity.

Policy:

* Bound to loopback only (the default) nothing changes: no token is asked for, and with
  ``--multi-user`` the ``Comfy-User`` header picks the user, as in ComfyUI.
* Bound to anything else (or ``--require-token``), every route and the WebSocket need a
  token, except ``/health`` and ``/ready`` (and ``/metrics`` with ``--metrics-public``):
  ``Authorization: Bearer T``, or ``?token=T`` once in the browser, which answers with a
  redirect that sets an HttpOnly, SameSite=Strict session cookie, so the official frontend
  works unchanged.  A missing, wrong or revoked token gets the same 401, whatever user it
  names: nothing tells a caller whether a user exists.
* Tokens come from ``--token``/``GENESIS_TOKEN`` (an admin token of user ``default``) and
  from ``<user dir>/tokens.json``: ``{"<token>": "alice", "<token2>": {"user": "bob",
  "admin": true}}``.  With ``--multi-user`` each token's user sees only their own queue
  items, history and user data; an admin token may act as another user through ComfyUI's
  ``Comfy-User`` header (ignored for everyone else).
* With no token configured the server creates one, stores it in ``<user dir>/genesis_token``
  with mode 0600 (kept across restarts) and prints the login URL, as Jupyter does.

Comparisons are constant-time (:func:`hmac.compare_digest` over SHA-256 digests, every
known token compared on every request).  The cookie holds an HMAC of the token under a key
kept in ``<user dir>/.genesis_cookie_key`` (0600): removing a token from the file revokes
its browser sessions too, and a restart keeps them.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
GENERATED_TOKEN_FILE = "genesis_token"
COOKIE_KEY_FILE = ".genesis_cookie_key"
COOKIE_NAME = "genesis_session"
TOKEN_ENV = "GENESIS_TOKEN"
DEFAULT_USER = "default"
OPEN_PATHS = frozenset({"/health", "/ready", "/api/health", "/api/ready"})
METRICS_PATHS = frozenset({"/metrics", "/api/metrics"})
_USER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenFileError(ValueError):
    """``tokens.json`` cannot be used (the server refuses to start rather than run open)."""


@dataclass(frozen=True)
class Principal:
    """The caller: a user name, whether it is an admin, and how it was identified."""

    user: str
    admin: bool = False
    via: str = "none"  # "token" | "cookie" | "query" | "loopback" | "none"

    @property
    def authenticated(self) -> bool:
        return self.via in ("token", "cookie", "query")


ANONYMOUS = Principal(DEFAULT_USER, admin=False, via="none")
LOOPBACK = Principal(DEFAULT_USER, admin=True, via="loopback")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenBook:
    """Known tokens and their principals; lookups compare against every entry in constant time."""

    def __init__(self, tokens: dict[str, Principal], cookie_key: bytes) -> None:
        self._cookie_key = cookie_key
        self._entries = [(_digest(t), self._cookie_mac(t), p) for t, p in tokens.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def _cookie_mac(self, token: str) -> bytes:
        return hmac.new(self._cookie_key, b"session:" + _digest(token), hashlib.sha256).digest()

    @staticmethod
    def _match(candidate: bytes, entries: list[tuple[bytes, Principal]]) -> Principal | None:
        found: Principal | None = None
        for known, principal in entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(candidate, known):
                found = principal
        return found

    def lookup(self, token: str) -> Principal | None:
        return self._match(_digest(token), [(d, p) for d, _, p in self._entries])

    def cookie_value(self, token: str) -> str:
        return self._cookie_mac(token).hex()

    def from_cookie(self, value: str) -> Principal | None:
        try:
            candidate = bytes.fromhex(value)
        except ValueError:
            return None
        if len(candidate) != hashlib.sha256().digest_size:
            return None
        return self._match(candidate, [(c, p) for _, c, p in self._entries])


def _write_secret(path: Path, data: str) -> None:
    """Create ``path`` readable by this user only (0600 from the start, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    try:
        value = path.read_text().strip()
        if value:
            return value, False
    except FileNotFoundError:
        pass
    value = make()
    _write_secret(path, value + "\n")
    return value, True


def load_token_file(path: Path) -> dict[str, Principal]:
    """``tokens.json``: ``{token: user}`` or ``{token: {"user": name, "admin": bool}}``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TokenFileError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenFileError(f"{path}: expected an object mapping tokens to user names")
    tokens: dict[str, Principal] = {}
    for token, value in data.items():
        if isinstance(value, str):
            user, admin = value, False
        elif isinstance(value, dict) and isinstance(value.get("user"), str):
            user, admin = value["user"], bool(value.get("admin", False))
        else:
            raise TokenFileError(f"{path}: the value for a token must be a user name or {{\"user\": ..., \"admin\": ...}}")
        if len(token) < 16:
            raise TokenFileError(f"{path}: the token of user {user!r} is shorter than 16 characters")
        if not _USER_NAME.match(user):
            raise TokenFileError(f"{path}: user name {user!r} may only hold letters, digits, '-' and '_'")
        tokens[token] = Principal(user, admin, "token")
    return tokens


@dataclass
class AuthSettings:
    """How one server identifies callers (see the module docstring)."""

    required: bool = False
    book: TokenBook | None = None
    multi_user: bool = False
    metrics_public: bool = False
    generated_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    _known_users: set[str] = field(default_factory=set)

    @classmethod
    def configure(cls, user_dir: Path, *, required: bool, token: str | None = None, multi_user: bool = False,
                  metrics_public: bool = False, cors_origins: tuple[str, ...] = ()) -> "AuthSettings":
        """Read the tokens (flag/env, tokens file), creating a token when none is configured."""
        settings = cls(required=required, multi_user=multi_user, metrics_public=metrics_public,
                       cors_origins=cors_origins)
        if not required:
            return settings
        token = token or os.environ.get(TOKEN_ENV) or None
        tokens = load_token_file(user_dir / TOKENS_FILE)
        if token:
            tokens[token] = Principal(DEFAULT_USER, True, "token")
        if not tokens:
            generated, created = _read_or_create(user_dir / GENERATED_TOKEN_FILE, lambda: secrets.token_urlsafe(32))
            tokens[generated] = Principal(DEFAULT_USER, True, "token")
            settings.generated_token = generated
            if created:
                log.info("created an access token in %s (mode 0600)", user_dir / GENERATED_TOKEN_FILE)
        cookie_key, _ = _read_or_create(user_dir / COOKIE_KEY_FILE, lambda: secrets.token_hex(32))
        settings.book = TokenBook(tokens, bytes.fromhex(cookie_key) if _is_hex(cookie_key) else cookie_key.encode())
        settings._known_users = {p.user for p in tokens.values()}
        return settings

    def login_url(self, base_url: str) -> str | None:
        if self.generated_token is None:
            return None
        return f"{base_url}/?{urlencode({'token': self.generated_token})}"

    # -- identifying a request -----------------------------------------------------------------
    def identify(self, request: web.Request) -> tuple[Principal | None, str | None]:
        """(principal, token given in the query) — principal None when a token is required and
        none valid was given."""
        if not self.required or self.book is None:
            return LOOPBACK, None
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            found = self.book.lookup(credential.strip())
            return (None if found is None else Principal(found.user, found.admin, "token")), None
        query_token = request.query.get("token")
        if query_token:
            found = self.book.lookup(query_token)
            return (None if found is None else Principal(found.user, found.admin, "query")), query_token
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            found = self.book.from_cookie(cookie)
            return (None if found is None else Principal(found.user, found.admin, "cookie")), None
        return None, None

    def is_open(self, path: str) -> bool:
        return path in OPEN_PATHS or (self.metrics_public and path in METRICS_PATHS)


def _is_hex(value: str) -> bool:
    try:
        bytes.fromhex(value)
        return True
    except ValueError:
        return False


AUTH: web.AppKey[AuthSettings] = web.AppKey("genesis_auth", AuthSettings)
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("genesis_principal", Principal)


def unauthorized() -> web.HTTPUnauthorized:
    body = {"error": {"type": "unauthorized", "message": "Authentication required",
                      "details": "send 'Authorization: Bearer <token>', or open /?token=<token> once in the browser",
                      "extra_info": {}}}
    return web.HTTPUnauthorized(text=json.dumps(body), content_type="application/json",
                                headers={"WWW-Authenticate": 'Bearer realm="genesis"'})


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[AUTH]
    principal, query_token = settings.identify(request)
    if principal is None:
        if settings.is_open(request.path):
            request[PRINCIPAL_KEY] = ANONYMOUS
            return await handler(request)
        raise unauthorized()
    request[PRINCIPAL_KEY] = principal
    if query_token is not None and settings.book is not None:
        cookie = settings.book.cookie_value(query_token)
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() != "websocket":
            # Take the token out of the address bar (and the browser history); the cookie carries it.
            query = [(k, v) for k, v in request.query.items() if k != "token"]
            location = request.path + (f"?{urlencode(query)}" if query else "")
            response = web.HTTPFound(location)
            _set_cookie(response, cookie, request.secure)
            raise response
    return await handler(request)


def _set_cookie(response: web.StreamResponse, value: str, secure: bool) -> None:
    response.set_cookie(COOKIE_NAME, value, httponly=True, samesite="Strict", secure=secure, path="/",
                        max_age=30 * 24 * 3600)


# -- who a request acts as -----------------------------------------------------------------------

def principal_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL_KEY, LOOPBACK)


def acting_user(request: web.Request) -> str | None:
    """The user a token-authenticated request acts as (an admin may name another through
    ``Comfy-User``); None when no token identifies the caller (loopback: ComfyUI's rules)."""
    principal = principal_of(request)
    if not principal.authenticated:
        return None
    if principal.admin:
        header = (request.headers.get("Comfy-User") or "").strip()
        if header and _USER_NAME.match(header):
            return header
    return principal.user


def owner_of(request: web.Request) -> str | None:
    """Whose jobs a request may see: None (everyone's) unless multi-user mode isolates users.

    In multi-user mode without tokens (loopback) the ``Comfy-User`` header names the user, as
    ComfyUI does; with tokens, the token's user (or an admin's chosen user).
    """
    settings = request.app[AUTH]
    if not settings.multi_user:
        return None
    user = acting_user(request)
    if user is not None:
        return user
    header = (request.headers.get("Comfy-User") or "").strip()
    return header if _USER_NAME.match(header) else DEFAULT_USER
