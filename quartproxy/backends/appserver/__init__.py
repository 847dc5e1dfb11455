"""The ``codex app-server`` backend: sans-io codec modules (framing, versions, request
parameters, notification translation, server-request answers) that the worker I/O layer drives.
"""
