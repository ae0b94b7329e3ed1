"""Seg2Sat for QGIS: a Processing provider that runs the Seg2Sat command line on QGIS layers."""


def classFactory(iface):  # noqa: N802 (QGIS's entry point name)
    """QGIS calls this to load the plugin."""
    from .plugin import Seg2SatPlugin

    return Seg2SatPlugin(iface)
