"""Entrypoint: rebalance a whole book. Same arguments as ``rebalance run``; this is what
``ray job submit`` runs (the job's driver joins the cluster through ``RAY_ADDRESS``)::

    ray job submit --address http://127.0.0.1:8265 -- \\
        python jobs/rebalance_book.py --book s3://bucket/books/std --out s3://bucket/runs
"""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
