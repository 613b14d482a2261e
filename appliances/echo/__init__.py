"""The echo appliance: TCP and UDP echo with a greeting (the smallest real appliance)."""
