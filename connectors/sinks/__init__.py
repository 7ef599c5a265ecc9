"""Outbound sinks: where triggers and contact state go after the worker decided them."""
