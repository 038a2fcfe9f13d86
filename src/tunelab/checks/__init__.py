"""`tunelab check`: everything that can be known about a config before hours of training, in seconds to a minute.

items.py holds the result types; data.py the checks on the rendered data (also run by `tunelab train` before it
loads the model); model.py the checks that need the model (one forward/backward on a real micro-batch, packed
against unpacked, fast path against generic, peak memory); preview.py shows the first examples with their loss
tokens marked; run.py puts them together.
"""
