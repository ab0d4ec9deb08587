"""Example apps for Flask-WebSocket."""
