"""Drivers for real SIP peers (external programs) that the end-to-end tests call through."""
