"""``python -m mechscope.apps COMMAND ...`` is the ``mechscope`` command; it is what torchrun runs:
``torchrun --nproc_per_node N -m mechscope.apps train job.toml``."""

import sys

from mechscope.apps.cli import main

sys.exit(main())
