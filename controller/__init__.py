"""SDN controller for the Open vSwitch routers.

Nothing here yet: the controller arrives with the emulated (Mininet) backend.
"""
