"""The plugin object QGIS loads: it registers the Processing provider, nothing else."""

from qgis.core import QgsApplication

from .provider import Seg2SatProvider


class Seg2SatPlugin:
    """Registers the Seg2Sat provider in the Processing toolbox."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        """Add the provider (QGIS calls this before initGui, also in qgis_process)."""
        self.provider = Seg2SatProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS's name)
        """The toolbox shows the algorithms; no menu or toolbar of our own."""
        self.initProcessing()

    def unload(self):
        """Remove the provider."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
