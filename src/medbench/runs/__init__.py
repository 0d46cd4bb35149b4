"""What a run leaves behind and where a grid keeps it: a run's results record (results), the grid's results store (store, store_db) and the leases on its cells (leases)."""
