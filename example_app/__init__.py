"""The runnable example: the original NestJS package's example app, in FastAPI (see ``main``)."""
