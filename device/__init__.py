"""device: where models run and what measures them (phones over ADB, host, power monitors, virtual lab)."""
