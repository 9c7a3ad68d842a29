"""alctl: deep active learning for image classification that uses the unlabeled pool."""

__version__ = "0.1.0"
