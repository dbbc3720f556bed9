"""Stores for responses and their input items, behind one small interface (``base.Store``)."""
