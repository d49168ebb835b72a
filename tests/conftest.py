"""Shared test set-up: aiohttp's pytest plugin runs ``async def`` tests and fixtures."""

pytest_plugins = ["aiohttp.pytest_plugin"]
