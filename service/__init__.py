"""The service's shared layer: settings, the database, its tables, the job store, the status
machine's transitions, API keys and the queue. Both api/ and worker/ import it; it imports
neither torch nor FastAPI (an import-linter contract keeps it so)."""
