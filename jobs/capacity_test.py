"""Entrypoint: the capacity test. Same arguments as ``rebalance capacity``; this is what
``ray job submit`` runs (the job's driver joins the cluster through ``RAY_ADDRESS``)::

    ray job submit --address http://127.0.0.1:8265 -- \\
        python jobs/capacity_test.py --accounts 350000 --book s3://bucket/books/cap-350k \\
            --out s3://bucket/runs --no-docs

On a cluster the book and the outputs must be where every worker can read them (object
storage); the figures land in ``<out>/<run id>/capacity.json``.
"""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["capacity", *sys.argv[1:]]))
