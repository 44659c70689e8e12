"""Pure control logic: the cycle step, sessions, planning, limits, sensing checks, forecasts.

No sockets and no tasks: the daemon and fast simulation both feed it readings and time.
"""
