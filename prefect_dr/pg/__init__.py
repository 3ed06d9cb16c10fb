"""PostgreSQL access: connections and preflight facts, client tools, dump and restore."""
