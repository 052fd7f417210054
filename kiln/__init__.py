"""kiln: side-load foundation images into air-gapped nodes under their exact registry names."""

__version__ = "0.1.0"
