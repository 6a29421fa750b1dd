"""cmbert: CM-BERT text+audio sentiment as Ray batch jobs. Start with ``cmbert.manifest``."""

__version__ = "0.1.0"
