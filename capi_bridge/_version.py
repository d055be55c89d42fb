"""The package version, in a module of its own: every module that needs it imports it from here,
never from the package root (which would make each of them depend on everything it exports).
Hatch reads it from here too."""

from __future__ import annotations

__version__ = "0.1.0"
