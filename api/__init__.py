"""The HTTP API: FastAPI routers, schemas, dependencies and settings. No SQL here: routes call `store`."""
