"""Sensitive data: detected before anything is stored, replaced or refused, counted by type."""

from threadline.privacy.detectors import BUILT_IN, Detector
from threadline.privacy.protection import PiiStrategy, Protector

__all__ = ["BUILT_IN", "Detector", "PiiStrategy", "Protector"]
