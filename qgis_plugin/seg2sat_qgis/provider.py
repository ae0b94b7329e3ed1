"""The Seg2Sat Processing provider: its algorithms and its one setting, the command line to run."""

from pathlib import Path

from processing.core.ProcessingConfig import ProcessingConfig, Setting
from qgis.core import QgsProcessingProvider

from .algorithms import ALGORITHMS
from .runner import SETTING, default_command

PROVIDER_ID = "seg2sat"


class Seg2SatProvider(QgsProcessingProvider):
    """Generate, repaint, mosaic, synthesize and draw land cover with the Seg2Sat command line."""

    def id(self):  # noqa: D102
        return PROVIDER_ID

    def name(self):  # noqa: D102
        return "Seg2Sat"

    def longName(self):  # noqa: N802, D102
        return "Seg2Sat: land cover to aerial images"

    def load(self):  # noqa: D102
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), SETTING, "Seg2Sat command (your Seg2Sat environment's seg2sat, or 'python -m seg2sat.cli')",
            default_command(Path(__file__).parent)))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):  # noqa: D102
        ProcessingConfig.removeSetting(SETTING)

    def loadAlgorithms(self):  # noqa: N802, D102
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
