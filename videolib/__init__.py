"""The video library's domain: database, storage, selection and the operations.

Nothing in this package imports prefect; tasks and flows wrap these functions.
"""
