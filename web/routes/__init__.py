"""Route modules, one per area; each exposes ``routes`` (mounted with an ``/api`` twin) and
optionally ``internal_routes`` / ``static_routes`` (mounted without one)."""
