"""One adapter per provider: request building and response mapping only (no I/O, see ``protocol``)."""
