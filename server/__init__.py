"""voxgate's server side: front doors, the call model and the command line."""

__version__ = "0.1.0"
