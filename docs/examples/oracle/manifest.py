"""Manifest of the oracle appliance: one fortune device, one key."""
from ingot.manifest import Appliance, device
from ingot.keys import key
from ingot_fortune import Fortune

appliance = Appliance(name="oracle", main="app:Oracle", doc="says things", ambient=False,
                      devices=[device("fortune", Fortune)],
                      keys=[key("n", int, "how many", 2)])
