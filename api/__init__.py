"""The pruning service's REST API (FastAPI). `api.app:create_app` builds the application."""
