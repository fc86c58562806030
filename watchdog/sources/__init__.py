"""Sources: where samples come from (NVML devices, NVML processes, host, simulated)."""
