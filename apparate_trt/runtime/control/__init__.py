"""The control plane (DESIGN.md, "Online"): per-ramp thresholds and ramp placement from feedback.

- :mod:`.controller`: the state machine (:class:`Controller`): window, tunes, emergencies, ramp moves;
- :mod:`.statistics`: pure window statistics (emergency limits, the winner's-curse correction);
- :mod:`.placement`: pure placement rules (which site to probe next);
- :mod:`.records`: bounded decision and history logs (:class:`RingLog`);
- :mod:`.options`: checks of the controller's options;
- :mod:`.loop`: the controller's own thread between the batch thread and the executor.
"""

from apparate_trt.runtime.control.controller import Config, Controller
from apparate_trt.runtime.control.loop import ControlLoop

__all__ = ["Config", "ControlLoop", "Controller"]
