"""The wire model: typed requests, items, responses and events; ids; errors as data.

Nothing here does I/O or imports from ``core``, engines, stores or transports.
"""
