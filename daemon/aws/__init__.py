"""Thin async adapters over aioboto3; nothing above this package imports botocore."""
