"""The store: SQLAlchemy tables and the functions that read and write them.

Functions take `session=` keyword-only and never commit; the caller owns the transaction.
"""
