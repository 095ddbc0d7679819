"""Genesis graph runtime: node schema, validation, execution, queue and history (no HTTP, no model code)."""
