"""The gallery's lifecycle beyond single uploads.

- :mod:`lookalike.lifecycle.backfill`: index a bucket that already holds images, through the
  upload-event path (``lookalike backfill``);
- :mod:`lookalike.lifecycle.reconcile`: find and repair every difference between the bucket and
  the two indexes (``lookalike reconcile``, and the scheduled reconciler function);
- :mod:`lookalike.lifecycle.dual_write`: write the next model's vectors too during a model change;
- :mod:`lookalike.lifecycle.listing`: the bucket in key order, and the cheap "already indexed" check.

docs/operations.md tells when to use which.
"""
