"""Unit tests of the library ``labelfree``: they import no ``experiments`` and no ``scripts``."""
