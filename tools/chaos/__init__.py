"""The chaos run (`make chaos`, bench/chaos.py): the scaled stack as processes
on loopback (parts.py, stack.py), work while faults happen (workload.py), a
seeded nemesis (nemesis.py), and the checks and report (report.py)."""
