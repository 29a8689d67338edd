"""`velo serve`: online predictions on the batch's own code path, the batch API and a live page."""
