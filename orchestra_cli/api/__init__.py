"""The REST + WebSocket API behind `orchestra api serve`: a thin layer over ``TaskService``.

Nothing here is imported by the CLI until the `api` command runs, because
FastAPI and uvicorn are heavy and `orchestra --help` must not pay for them.
"""
