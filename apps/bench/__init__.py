"""Benchmarks that compare mechscope with other libraries (or with its own slow path), printing
ratios against a baseline measured in the same run: ``capture``, ``train``, ``routes``,
``attribution`` (``kernels`` lives in `mechscope.kernels.bench`)."""
