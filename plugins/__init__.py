"""Ingot plugins: device backends and protocol libraries, each a pluggy plugin."""
