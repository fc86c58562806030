"""Policy: turn findings and schedules into actions, within guards that prevent restart loops.

``rules`` declares the escalation ladder and schedules (configuration),
``engine`` decides (a pure function of events, jobs, history and time),
``journal`` remembers what was done across daemon restarts.
"""
