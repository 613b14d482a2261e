"""Ingot appliances: one package each, a manifest plus a small application."""
