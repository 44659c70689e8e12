"""OPC-UA transport: devices read and written as the variables of one object per device.

`space` is the address space (shared with the simulator's server), `security` the policies and
trust, `link` one client session with one endpoint, `device` one device behind a link.
"""
