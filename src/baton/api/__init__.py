"""The HTTP face: FastAPI app, routes, live streams, auth and problem+json errors."""
