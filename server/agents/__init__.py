"""Agents: what the bot says. Each agent turns a caller's turn into reply audio."""
