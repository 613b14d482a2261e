"""The hello appliance: the MirageOS tutorial's first unikernel."""
