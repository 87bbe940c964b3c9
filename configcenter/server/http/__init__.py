"""The HTTP surface: the application factory, thin handlers (parse, authorize, call a store), the console."""

from .app import create_app, serve, start_site

__all__ = ["create_app", "serve", "start_site"]
