"""Data: dataset adapters, the cache format, patient-level splits and EHR encoding."""
