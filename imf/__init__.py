"""imf: a research workbench for few-step speech generation (IntMeanFlow, O3S, MeanFlow).

Layers: maths (``paths``, ``schedules``, ``solvers``, ``losses``, ``o3s``) import no model;
``models`` import no training code; ``train``/``eval`` tie them together; notebooks call ``imf``.
"""
__version__ = "0.1.0"
