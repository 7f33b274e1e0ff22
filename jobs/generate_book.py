"""Entrypoint: generate a synthetic book. Same arguments as ``rebalance generate``.

    python jobs/generate_book.py --accounts 350000 --seed 1 --out s3://bucket/books/std
"""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
