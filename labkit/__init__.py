"""labkit: the helper package of a hands-on course on fine-tuning LLMs.

Modules, one idea each: env (device, seeds, quiet offline defaults), models (the bundled model),
corpus and data (the generated world and the course's datasets), evaluate (metrics), widgets,
show (rendering labkit's own source in a notebook), cli (`labkit doctor`).
Importing labkit is cheap: torch and transformers are imported only when a function needs them.
"""

__version__ = "0.1.0"
