"""DLink: distil an EEG foundation model into a tiny int8 student for the edge."""

__version__ = "0.1.0"
