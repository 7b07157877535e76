"""The routers, mounted under /api/v1 by api.app (health and readiness at the root too)."""
