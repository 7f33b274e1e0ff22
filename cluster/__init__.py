"""Ray orchestration of a full-book run: sharding by household bucket, task fan-out with
backpressure, retries, gathering, progress and the run manifest. Imports ``rebalancer``;
``rebalancer`` never imports this package (or ray)."""
