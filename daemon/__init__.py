"""spire-kms-reconciler: keeps SPIRE's AWS KMS keys alive and reclaims the dead ones."""

__version__ = "0.1.0"
