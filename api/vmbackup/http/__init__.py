"""The HTTP layer: the Bottle routes, the OpenAPI description and the server that wires the application."""
