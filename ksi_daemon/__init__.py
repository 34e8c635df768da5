"""KSI daemon. Importing this package is cheap: nothing heavy loads until the daemon starts."""
__version__ = "0.1.0"
