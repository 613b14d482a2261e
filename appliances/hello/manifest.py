"""Manifest of ``hello``: prints a line every second, a given number of times."""

from ingot.keys import key, non_negative, positive
from ingot.manifest import Appliance, device
from ingot.signatures import MClock, Sleep

appliance = Appliance(
    name="hello",
    main="app:Hello",
    doc="Print a greeting N times, one second apart",
    ambient=False,
    devices=[
        device("mclock", MClock, doc="measures the time between lines"),
        device("sleep", Sleep, doc="waits between lines"),
    ],
    keys=[
        key("hello", str, "The text to print", "Hello World!"),
        key("n", int, "How many lines to print", 4, validate=positive),
        key("interval", float, "Seconds between lines", 1.0, validate=non_negative),
    ],
)
