"""Multi-process fault tests: real processes, real signals, a private redis-server each."""
