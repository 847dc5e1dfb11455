"""HTTP routes, one blueprint per concern; each reads its dependencies from the app state."""
