"""Fault tests: private PostgreSQL, Redis and eos processes, killed and stopped on purpose (issue 8).

`services` starts the private servers and the project's processes, `scenarios` holds the four
faults (a worker SIGKILL, a Redis restart, a PostgreSQL outage, a burst of submissions) as
functions that both `test_faults.py` and `bench/faults.py` call.
"""
