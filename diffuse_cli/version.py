"""The package's version, in a module of its own: reports record it, and importing it from the
package itself would load the whole public API from inside the commands."""

__version__ = "0.1.0"
