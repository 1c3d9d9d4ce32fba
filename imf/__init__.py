"""imf: a research workbench for few-step speech generation (IntMeanFlow, O3S, MeanFlow).

Layers: maths (``paths``, ``schedules``, ``solvers``, ``losses``, ``o3s``) import no model;
``models`` import no training code; ``train``/``eval`` tie them together; notebooks call ``imf``.
"""
import os as _os

# OpenMP reads this when torch is first imported: passive waiting keeps a training job from
# slowing 11x when another process holds a core (measured here). Set it before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
