"""The ``qubesdb`` device: Qubes' configuration database (being written)."""
