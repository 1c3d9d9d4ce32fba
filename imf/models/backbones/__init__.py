"""Adapters that make foreign flow-matching networks velocity models of the workbench.

:mod:`~imf.models.backbones.adapter`: the protocol (:class:`Backbone`) and the student of a
foreign network (:func:`make_student`). :mod:`~imf.models.backbones.f5`: F5-TTS's DiT.
Importing this package registers the adapters with :mod:`imf.core.checkpoints` (so
``load_model`` rebuilds them); the foreign packages themselves are imported only when a model
is built (install the ``f5`` extra for F5-TTS).
"""
from imf.models.backbones.adapter import Backbone, make_student, module_at
from imf.models.backbones.f5 import (F5Backbone, F5Config, dit_state_dict_of, f5_model_config, load_f5_weights,
                                     read_f5_state_dict)

__all__ = ["Backbone", "make_student", "module_at", "F5Backbone", "F5Config", "dit_state_dict_of",
           "f5_model_config", "load_f5_weights", "read_f5_state_dict"]
