"""Put on PYTHONPATH by tests/test_multinode.py: each process logs where its training data came from (the
`adapt.data` logger's "written to the cache" / "loaded from the cache"), tagged with its global rank."""

import logging
import os

handler = logging.StreamHandler()
handler.setFormatter(logging.Formatter(f"rank{os.environ.get('RANK', '?')} %(name)s: %(message)s"))
logger = logging.getLogger("adapt.data")
logger.addHandler(handler)
logger.setLevel(logging.INFO)
