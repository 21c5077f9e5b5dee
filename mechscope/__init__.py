"""mechscope: mechanistic interpretability toolkit.

Subpackages: ``mechscope.interp`` (models, sites, capture, streams, zoo), ``mechscope.sae``
(dictionaries and training), ``mechscope.circuits`` (tracing to graphs), ``mechscope.kernels``
(top-k encoder / sparse decoder kernels) and ``mechscope.apps`` (CLI and browsers).
Importing this package is cheap: it imports no subpackage.
"""

__version__ = "0.1.0"
