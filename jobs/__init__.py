"""The jobs: each is a typed config plus Ray wiring; run as `python -m jobs.NAME` or `python jobs/NAME.py`."""
